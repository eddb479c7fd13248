"""Two CPU ranks (gloo): meta init + FSDP2 + per-rank safetensors loading against a plain ``from_pretrained``.

Run by ``tests/test_loading.py::test_two_rank_sharded_load_matches_from_pretrained`` (never by pytest
directly): the test writes tiny Llama checkpoints (sharded safetensors + index) and starts this
script twice with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set. For every folder each
rank builds ``LlamaForCausalLM`` on the meta device, shards it with FSDP2 and loads it, recording
every ``safe_open(...).get_slice(key)[...]`` / ``get_tensor(key)`` request:

- ``parallelize``: through :func:`mdlm.parallel.parallelize` and the backbone contract
  (``pretrained_folder``, ``checkpoint_prefix="model."``) on a wrapper module;
- ``manual``: ``fully_shard`` + :func:`mdlm.parallel.materialize_meta_` (``init=False``) +
  :func:`mdlm.models.loading.load_safetensors_into`.

Then one forward on both ranks; the logits are compared with a plain fp32 ``from_pretrained`` of the
same folder. Each rank writes ``<out>/rank<R>.json``.

    python tests/scripts/sharded_load.py --out DIR FOLDER [FOLDER ...]
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path


class Recorder:
    """Wraps ``safe_open`` and logs the index block of every read."""

    def __init__(self, original) -> None:
        self.original = original
        self.reads: list[dict] = []

    def __call__(self, *args, **kwargs):
        recorder = self

        class Handle:
            def __init__(self) -> None:
                self.inner = recorder.original(*args, **kwargs)

            def __enter__(self):
                self.f = self.inner.__enter__()
                return self

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, key):
                t = self.f.get_tensor(key)
                recorder.reads.append({"key": key, "block": [[0, n] for n in t.shape], "whole": True})
                return t

            def get_slice(self, key):
                inner = self.f.get_slice(key)

                class Slice:
                    def get_shape(self):
                        return inner.get_shape()

                    def __getitem__(self, index):
                        index = index if isinstance(index, tuple) else (index,)
                        shape = inner.get_shape()
                        block = [[s.indices(n)[0], s.indices(n)[1]] for s, n in zip(index, shape)]
                        recorder.reads.append({"key": key, "block": block, "whole": False})
                        return inner[index]

                return Slice()

        return Handle()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    import mdlm.models.loading as loading
    from mdlm.parallel import FSDP2Plan, materialize_meta_, parallelize

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    recorder = Recorder(loading.safe_open)
    loading.safe_open = recorder

    class Backbone(torch.nn.Module):
        """The backbone contract of mdlm.parallel.parallelize around a transformers model."""

        def __init__(self, config, folder: str) -> None:
            super().__init__()
            self.model = LlamaForCausalLM(config)
            self.pretrained_folder = folder
            self.checkpoint_prefix = "model."
            self.tied_weights = None

        def block_classes(self):
            return {type(self.model.model.layers[0])}

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits

    results: dict[str, dict] = {}
    for folder in args.folders:
        config = LlamaConfig.from_pretrained(folder)
        reference = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ids = torch.randint(0, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            expected = reference(input_ids=ids).logits
        for route in ("parallelize", "manual"):
            recorder.reads.clear()
            with torch.device("meta"):
                model = Backbone(config, folder) if route == "parallelize" else LlamaForCausalLM(config)
            if route == "parallelize":
                parallelize(model, mesh, FSDP2Plan())
                inner = model.model
                report = None
            else:
                for layer in model.model.layers:
                    fully_shard(layer, mesh=mesh)
                fully_shard(model, mesh=mesh)
                materialize_meta_(model, "cpu", init=False)
                report = loading.load_safetensors_into(model, folder)
                inner = model
            shards = {  # before the forward, after which the root's parameters stay unsharded
                name: {"shape": list(p.shape), "local_rows": p.to_local().shape[0]}
                for name, p in inner.named_parameters()
            }
            inner.eval()
            with torch.no_grad():
                logits = model(ids) if route == "parallelize" else model(input_ids=ids).logits
            results[f"{Path(folder).name}/{route}"] = {
                "max_abs_diff": (logits - expected).abs().max().item(),
                "reads": list(recorder.reads),
                "shards": shards,
                "tied": inner.lm_head.weight is inner.model.embed_tokens.weight,
                "tie_word_embeddings": bool(config.tie_word_embeddings),
                "inv_freq_diff": (inner.model.rotary_emb.inv_freq - reference.model.rotary_emb.inv_freq).abs().max().item(),
                "bytes_read": None if report is None else report.bytes_read,
            }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world_size": world, "results": results}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
