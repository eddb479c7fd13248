"""Per-rank safetensors loading (mdlm.models.loading) and its FSDP2 integration (mdlm.parallel).

Tiny transformers Llama checkpoints written with ``save_pretrained(max_shard_size="20KB")`` (several
``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``) or as one
``model.safetensors``; vocab 97 rows so dim-0 shards are uneven. In-process: plain modules, a
1-rank gloo group, and the ``fake`` backend to build any rank of a larger world; the 2-rank gloo
forward check runs in ``tests/scripts/sharded_load.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from conftest import REPO_ROOT as ROOT
from conftest import SCRIPTS, free_port
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from mdlm.models.loading import (  # noqa: E402
    INDEX_FILE,
    SINGLE_FILE,
    checkpoint_files,
    load_safetensors_into,
    non_persistent_buffer_names,
    rebuild_non_persistent_buffers,
)
from mdlm.parallel import FSDP2Plan, FSDP2Strategy, materialize_meta_, parallelize  # noqa: E402

SCRIPT = SCRIPTS / "sharded_load.py"


def _script_module():
    """``tests/scripts/sharded_load.py`` as a module (its ``Recorder`` spies on ``safe_open``)."""
    from conftest import load_script

    return load_script("sharded_load")
VOCAB = 97

hf_logging.disable_progress_bar()


def llama_config(tie: bool) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=tie, attn_implementation="sdpa",
    )


def save_llama(folder: Path, tie: bool, sharded: bool = True, seed: int = 0, dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tie)).to(dtype)
    with torch.no_grad():  # norms away from 1 so a missed load shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(folder), **({"max_shard_size": "20KB"} if sharded else {}))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    refs = {}
    for tie in (True, False):
        for sharded in (True, False):
            name = f"{'tied' if tie else 'untied'}_{'sharded' if sharded else 'single'}"
            refs[name] = (root / name, save_llama(root / name, tie, sharded).eval())
    return refs


class Backbone(torch.nn.Module):
    """What mdlm.parallel.parallelize expects of a backbone that brings its own checkpoint."""

    def __init__(self, config, folder, tied=None) -> None:
        super().__init__()
        self.model = LlamaForCausalLM(config)
        self.pretrained_folder = str(folder)
        self.checkpoint_prefix = "model."
        self.tied_weights = tied

    def block_classes(self):
        return {type(self.model.model.layers[0])}

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).logits


def rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """FSDP2's dim-0 chunk of rank: ceil(n / world) rows, the last ranks fewer or none."""
    chunk = -(-n // world)
    start = min(rank * chunk, n)
    return start, min(start + chunk, n)


# ---------------------------------------------------------------------------- files
def test_checkpoint_files_reads_the_index_or_the_single_file(checkpoints, tmp_path, monkeypatch):
    folder, ref = checkpoints["tied_sharded"]
    files = checkpoint_files(folder)
    assert (folder / INDEX_FILE).is_file() and len({f.name for f in files.values()}) > 3  # really sharded
    assert set(files) == set(ref.state_dict()) - {"lm_head.weight"}  # the tied head is not stored
    single, _ = checkpoints["untied_single"]
    files = checkpoint_files(single)
    assert not (single / INDEX_FILE).exists() and set(files.values()) == {single / SINGLE_FILE}
    assert "lm_head.weight" in files

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"empty holds no safetensors checkpoint: expected model\.safetensors\.index"
                       r"\.json .* or a single model\.safetensors; found \['config.json'\]"):
        checkpoint_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_files(tmp_path / "nowhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'no-such-org/no-such-model' is not a local folder.*local hub cache"):
        checkpoint_files("no-such-org/no-such-model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / INDEX_FILE).write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"names shard files that are not in .*model-00001-of-00002"):
        checkpoint_files(broken)


# ---------------------------------------------------------------------------- plain modules
@pytest.mark.parametrize("layout", ["tied_sharded", "tied_single", "untied_sharded", "untied_single"])
def test_plain_module_loads_both_layouts(checkpoints, layout):
    folder, ref = checkpoints[layout]
    torch.manual_seed(123)
    model = LlamaForCausalLM(llama_config(ref.config.tie_word_embeddings)).eval()
    report = load_safetensors_into(model, folder)
    for name, t in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == ref.config.tie_word_embeddings
    assert report.bytes_read == sum(t.numel() * 4 for t in ref.parameters())  # each stored tensor read once
    ids = torch.randint(0, VOCAB, (2, 9))
    torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=0, atol=0)


def test_casts_to_the_parameter_dtype_and_through_dtype(tmp_path):
    ref = save_llama(tmp_path / "bf16", tie=False, sharded=True, dtype=torch.bfloat16)
    model = LlamaForCausalLM(llama_config(False))
    load_safetensors_into(model, tmp_path / "bf16")
    assert model.lm_head.weight.dtype == torch.float32
    assert torch.equal(model.lm_head.weight, ref.lm_head.weight.float())
    fp32 = save_llama(tmp_path / "fp32", tie=False)
    load_safetensors_into(model, tmp_path / "fp32", dtype=torch.bfloat16)  # values rounded through bf16
    assert torch.equal(model.lm_head.weight, fp32.lm_head.weight.bfloat16().float())


def test_errors_name_missing_unexpected_and_misshapen_keys(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, ref = checkpoints["untied_single"]
    state = load_file(str(folder / SINGLE_FILE))

    def write(name, tensors):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / SINGLE_FILE))
        return tmp_path / name

    model = LlamaForCausalLM(llama_config(False))
    missing = write("missing", {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight \(checkpoint key 'model\.layers\.1\.mlp\.up_proj\.weight'\)"):
        load_safetensors_into(model, missing)
    bad = write("shape", {**state, "model.norm.weight": torch.ones(63)})
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape \(63,\) but model\.norm\.weight has shape \(64,\)"):
        load_safetensors_into(model, bad)
    extra = write("extra", {**state, "model.extra.weight": torch.ones(3), "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)})
    with pytest.raises(KeyError, match=r"1 checkpoint key\(s\) .* match no tensor .*\['model\.extra\.weight'\]"):
        load_safetensors_into(model, extra)  # the legacy rotary key is allowed by default
    load_safetensors_into(model, extra, allow_unexpected=[r"^model\.extra\."])
    load_safetensors_into(model, extra, allow_unexpected=True)
    with pytest.raises(KeyError, match="does not start with the checkpoint prefix 'backbone.'"):
        load_safetensors_into(model, folder, prefix="backbone.")
    with torch.device("meta"):
        meta = LlamaForCausalLM(llama_config(False))
    with pytest.raises(RuntimeError, match="on the meta device: materialise"):
        load_safetensors_into(meta, folder)


def test_prefix_key_map_and_explicit_ties(checkpoints, tmp_path):
    folder, ref = checkpoints["tied_sharded"]
    wrapped = Backbone(llama_config(True), folder)
    load_safetensors_into(wrapped, folder, prefix="model.")
    assert torch.equal(wrapped.model.lm_head.weight, ref.lm_head.weight)
    # a model whose head is not tied (its own Parameter) and a checkpoint without lm_head.weight
    untied = LlamaForCausalLM(llama_config(False))
    with pytest.raises(KeyError, match=r"lm_head\.weight \(checkpoint key 'lm_head\.weight'\)"):
        load_safetensors_into(untied, folder)
    report = load_safetensors_into(untied, folder, tied={"lm_head.weight": "model.embed_tokens.weight"})
    assert report.keys["lm_head.weight"] == "model.embed_tokens.weight"
    assert torch.equal(untied.lm_head.weight, ref.model.embed_tokens.weight)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    # key_map: a dict or a function, applied after the prefix
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoints["tied_single"][0] / SINGLE_FILE))
    state["model.final_norm.weight"] = state.pop("model.norm.weight")
    (tmp_path / "renamed").mkdir()
    save_file(state, str(tmp_path / "renamed" / SINGLE_FILE))
    for key_map in ({"model.norm.weight": "model.final_norm.weight"}, lambda k: k.replace(".norm.", ".final_norm.")):
        model = Backbone(llama_config(True), tmp_path / "renamed")
        report = load_safetensors_into(model, tmp_path / "renamed", prefix="model.", key_map=key_map)
        assert report.keys["model.model.norm.weight"] == "model.final_norm.weight"
        assert torch.equal(model.model.model.norm.weight, ref.model.norm.weight)


# ---------------------------------------------------------------------------- non-persistent buffers
def test_garbage_inv_freq_is_rebuilt():
    config = llama_config(True)
    fresh = LlamaForCausalLM(config)
    model = LlamaForCausalLM(config)
    names = non_persistent_buffer_names(model)
    assert names == ["model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"]
    for name in names:
        model.get_buffer(name).fill_(float("nan"))
    how = rebuild_non_persistent_buffers(model, names)
    assert how == dict.fromkeys(names, "fresh")
    for name in names:
        assert torch.equal(model.get_buffer(name), fresh.get_buffer(name)), name
    # a scaled rope type goes through the same constructor
    scaled = llama_config(True)
    scaled.rope_parameters = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    ref, model = LlamaForCausalLM(scaled), LlamaForCausalLM(scaled)
    model.model.rotary_emb.inv_freq.fill_(float("nan"))
    rebuild_non_persistent_buffers(model)
    assert torch.equal(model.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)
    assert not torch.equal(ref.model.rotary_emb.inv_freq, fresh.model.rotary_emb.inv_freq)


def test_meta_materialisation_rebuilds_buffers_and_refuses_unknown_ones():
    config = llama_config(False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert non_persistent_buffer_names(model, only_meta=True) == ["model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"]
    materialize_meta_(model, "cpu", init=False)
    assert torch.equal(model.model.rotary_emb.inv_freq, LlamaForCausalLM(config).model.rotary_emb.inv_freq)

    class Cache(torch.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.register_buffer("table", torch.arange(float(n)), persistent=False)

    class Opaque(torch.nn.Module):  # the constructor argument is not kept: no way to rebuild
        def __init__(self, n: int) -> None:
            super().__init__()
            self.register_buffer("table", torch.arange(float(n)), persistent=False)

    class Hooked(Opaque):
        def reset_non_persistent_buffers(self) -> None:
            self.table.copy_(torch.arange(float(self.table.numel())))

    class Kept(Cache):
        def __init__(self, n: int) -> None:
            super().__init__(n)
            self.n = n

    with torch.device("meta"):
        opaque, hooked, kept = Opaque(5), Hooked(5), Kept(5)
    with pytest.raises(RuntimeError, match=r"cannot rebuild non-persistent buffers .*<root> \(Opaque\): \['table'\] — its constructor needs \['n'\]"):
        materialize_meta_(opaque, "cpu")
    assert torch.equal(materialize_meta_(hooked, "cpu").table, torch.arange(5.0))
    assert torch.equal(materialize_meta_(kept, "cpu").table, torch.arange(5.0))
    opaque = Opaque(5)
    opaque.table.fill_(float("nan"))
    assert rebuild_non_persistent_buffers(opaque, reference=lambda: Opaque(5)) == {"table": "reference"}
    assert torch.equal(opaque.table, torch.arange(5.0))


# ---------------------------------------------------------------------------- FSDP2
@pytest.fixture
def fake_group():
    """Any rank of a simulated world (the ``fake`` backend: shapes and placements, no data exchange)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    def init(rank: int, world: int):
        from torch.distributed.device_mesh import init_device_mesh

        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        # a dimension name of its own: meshes compare equal regardless of the rank, and a DTensor could
        # otherwise pick up a cached mesh of an earlier simulated rank in this process
        return init_device_mesh("cpu", (world,), mesh_dim_names=(f"dp_rank{rank}_of_{world}",))

    yield init
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize(("layout", "rank", "world"), [
    ("tied_sharded", 1, 2), ("untied_sharded", 0, 2), ("untied_single", 2, 3), ("tied_sharded", 70, 80),
])
def test_each_rank_reads_only_its_rows(checkpoints, fake_group, monkeypatch, layout, rank, world):
    """A rank of a W-rank FSDP2 mesh (meta init, through parallelize and the backbone contract) requests
    exactly its dim-0 rows of every tensor from safe_open (none when it holds none: rank 70 of 80), and
    its local shards equal those rows of the saved model; rotary buffers are rebuilt."""
    from torch.distributed.tensor import DTensor

    import mdlm.models.loading as loading

    folder, ref = checkpoints[layout]
    recorder = _script_module().Recorder(loading.safe_open)  # the 2-rank script's safe_open spy
    monkeypatch.setattr(loading, "safe_open", recorder)
    mesh = fake_group(rank, world)
    with torch.device("meta"):
        backbone = Backbone(ref.config, folder)
    assert parallelize(backbone, mesh, FSDP2Plan()) is True
    model = backbone.model
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == ref.config.tie_word_embeddings
    stored = checkpoint_files(folder)
    state = ref.state_dict()
    requests: dict[str, list] = {}
    for read in recorder.reads:
        requests.setdefault(read["key"], []).append("whole" if read["whole"] else tuple(map(tuple, read["block"])))
    zero_rows = 0
    for name, p in model.named_parameters():
        assert isinstance(p, DTensor)
        a, b = rows(p.shape[0], rank, world)
        assert torch.equal(p.to_local(), state[name][a:b]), name
        if b == a:
            zero_rows += 1
            assert name not in requests, name  # nothing read for an empty shard
        else:
            expected = ((a, b),) + tuple((0, n) for n in p.shape[1:])
            assert requests[name] == [expected], name  # one request, exactly this rank's rows
    assert set(requests) <= set(stored)
    assert (zero_rows > 0) == (rank >= 64)  # 64-row tensors hold nothing on ranks >= 64 of 80
    fresh = LlamaForCausalLM(ref.config)
    assert torch.equal(model.model.rotary_emb.inv_freq, fresh.model.rotary_emb.inv_freq)
    assert torch.equal(model.model.rotary_emb.original_inv_freq, fresh.model.rotary_emb.original_inv_freq)



def test_plan_pretrained_on_one_rank_gives_the_logits_of_from_pretrained(checkpoints, one_rank_group):
    folder, _ = checkpoints["untied_sharded"]
    reference = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.device("meta"):
        backbone = Backbone(reference.config, folder)
    backbone.pretrained_folder = None  # the plan names the folder; the prefix still comes from the backbone
    assert parallelize(backbone, one_rank_group, FSDP2Plan(pretrained=str(folder), checkpoint_blocks=True))
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        diff = (backbone.eval()(ids) - reference(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-6, diff


def test_plan_and_strategy_take_pretrained(tmp_path):
    with pytest.raises(ValueError, match="init_weights='a.pt' and pretrained='folder' both set"):
        FSDP2Plan(init_weights="a.pt", pretrained="folder")
    strategy = FSDP2Strategy(pretrained="some/folder", checkpoint_blocks=True)
    assert strategy.plan.pretrained == "some/folder" and strategy.plan.checkpoint_blocks
    assert strategy.plan.init_weights is None


@pytest.mark.distributed
def test_two_rank_sharded_load_matches_from_pretrained(checkpoints, tmp_path):
    """2 gloo ranks (tests/scripts/sharded_load.py): meta init + FSDP2 + per-rank reads, tied and untied,
    through parallelize and by hand: the logits equal a plain fp32 from_pretrained, every rank asked
    safetensors only for its own rows, and the ranks together read each stored tensor exactly once."""
    folders = [str(checkpoints[name][0]) for name in ("tied_sharded", "untied_sharded")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    procs = [
        subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(tmp_path), *folders], cwd=ROOT,
                         env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text())["results"] for r in (0, 1)]
    assert set(ranks[0]) == {f"{n}/{route}" for n in ("tied_sharded", "untied_sharded") for route in ("parallelize", "manual")}
    for run, r0 in ranks[0].items():
        folder = checkpoints[run.split("/")[0]][0]
        stored = checkpoint_files(folder)
        per_rank = [ranks[0][run], ranks[1][run]]
        for rank, res in enumerate(per_rank):
            assert res["max_abs_diff"] <= 1e-6, (run, rank, res["max_abs_diff"])
            assert res["inv_freq_diff"] == 0.0
            assert res["tied"] == res["tie_word_embeddings"]
            assert not any(read["whole"] for read in res["reads"])
            for read in res["reads"]:
                n = res["shards"][read["key"]]["shape"][0]
                assert read["block"][0] == list(rows(n, rank, 2)), (run, rank, read)
        # together: every stored key once per rank, the two row ranges tile the tensor
        for res in per_rank:
            keys = [read["key"] for read in res["reads"]]
            assert sorted(keys) == sorted(stored), run
        if r0["bytes_read"] is not None:
            total = sum(torch.Size(s["shape"]).numel() * 4 for k, s in r0["shards"].items() if k in stored)
            assert per_rank[0]["bytes_read"] + per_rank[1]["bytes_read"] == total
