"""HFBackbone: transformers models as bidirectional mdlm backbones (tiny models from configs, offline).

The reference for "bidirectional" is independent of HFBackbone's mechanism: a fresh, unmodified copy
of the same transformers model (causal by default) called with an explicit 4D all-visible /
key-padding mask, which transformers passes to the attention functions untouched.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_trainer  # noqa: E402

transformers = pytest.importorskip("transformers")

from mdlm.models.hf import HFBackbone, export_pretrained, make_bidirectional  # noqa: E402

V = 97
L = 10
_DEC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64, vocab_size=V)
CAUSAL = {
    "llama": dict(model_type="llama", **_DEC),
    "qwen2": dict(model_type="qwen2", **_DEC),
    "qwen3": dict(model_type="qwen3", head_dim=8, **_DEC),
    "mistral": dict(model_type="mistral", sliding_window=None, **_DEC),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=V,
                 bos_token_id=0, eos_token_id=0),
}
MASKED = {
    "bert": dict(model_type="bert", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, vocab_size=V, pad_token_id=0),
}
FAMILIES = [(name, "causal_lm", cfg) for name, cfg in CAUSAL.items()] + [
    (name, "masked_lm", cfg) for name, cfg in MASKED.items()
]


def _backbone(cfg, auto_class="causal_lm", attn="sdpa", vocab=V, **kw):
    torch.manual_seed(0)
    return HFBackbone(vocab, config=dict(cfg), auto_class=auto_class, attn_implementation=attn, **kw).eval()


def _ids(batch=2, length=L, seed=0):
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def _reference(bb: HFBackbone, attn: str):
    """A fresh unmodified (causal) copy of the wrapped model with the same weights."""
    config = copy.deepcopy(bb.model.config)
    config.is_causal = True
    config._attn_implementation = attn
    raw = type(bb.model)(config).eval()
    raw.load_state_dict(bb.model.state_dict())
    return raw


def _full_mask(key_mask: torch.Tensor, attn: str, dtype=torch.float32) -> torch.Tensor:
    """A 4D [B, 1, L, L] mask letting every query see every real key: bool for sdpa, additive for eager."""
    visible = key_mask.bool()[:, None, None, :].expand(-1, 1, key_mask.shape[1], -1)
    if attn == "sdpa":
        return visible
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name,auto_class,cfg", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_later_tokens_change_earlier_logits_and_match_a_full_mask_reference(name, auto_class, cfg, attn):
    bb = _backbone(cfg, auto_class, attn)
    assert bb.model.config._attn_implementation == attn
    ids = _ids()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] % (V - 1)) + 1  # change only the last token j = L-1
    with torch.no_grad():
        a, b = bb(ids), bb(changed)
    assert a.shape == (2, L, V)
    # a silently causal model would give identical logits at every i < j
    assert (a[:, : L - 1] - b[:, : L - 1]).abs().amax(dim=-1).min() > 1e-4

    raw = _reference(bb, attn)
    with torch.no_grad():
        ref = raw(input_ids=ids, attention_mask=_full_mask(torch.ones_like(ids), attn)).logits
        causal = raw(input_ids=ids).logits
        causal_changed = raw(input_ids=changed).logits
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-4)
    if auto_class == "causal_lm":  # control: the unmodified model is causal, so the check above has teeth
        torch.testing.assert_close(causal[:, : L - 1], causal_changed[:, : L - 1], atol=0, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name,auto_class,cfg", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_padding_is_invisible(name, auto_class, cfg, attn, side):
    bb = _backbone(cfg, auto_class, attn)
    n_real = 6
    ids = _ids()
    mask = torch.zeros(2, L, dtype=torch.bool)
    real = slice(0, n_real) if side == "right" else slice(L - n_real, L)
    mask[:, real] = True
    other = torch.where(mask, ids, _ids(seed=1))  # same real tokens, different padded content
    with torch.no_grad():
        a, b = bb(ids, attention_mask=mask), bb(other, attention_mask=mask)
        alone = bb(ids[:, real])  # the real tokens without any padding
    torch.testing.assert_close(a[:, real], b[:, real], atol=0, rtol=0)
    if auto_class == "causal_lm" or side == "right":
        # positions count real tokens from 0 (causal LMs get position_ids from the mask): padding changes nothing
        torch.testing.assert_close(a[:, real], alone, atol=1e-5, rtol=1e-4)

    raw = _reference(bb, attn)
    kwargs = {"position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)} if bb.position_ids_from_mask else {}
    with torch.no_grad():
        ref = raw(input_ids=ids, attention_mask=_full_mask(mask, attn), **kwargs).logits
    torch.testing.assert_close(a[:, real], ref[:, real], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sliding_window_becomes_a_symmetric_window(attn):
    bb = _backbone(dict(CAUSAL["mistral"], sliding_window=3), attn=attn)
    ids = _ids(length=12)
    with torch.no_grad():
        base = bb(ids)
        near = ids.clone()
        near[:, 6] = (near[:, 6] % (V - 1)) + 1  # within the window of position 5 (|5 - 6| < 3) ...
        far = ids.clone()
        far[:, 11] = (far[:, 11] % (V - 1)) + 1  # ... and far outside it after 2 layers (|0 - 11| > 2 * 3)
        assert (bb(near)[:, 5] - base[:, 5]).abs().max() > 1e-4
        torch.testing.assert_close(bb(far)[:, 0], base[:, 0], atol=0, rtol=0)


def test_make_bidirectional_after_a_plain_load(tmp_path):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**CAUSAL["llama"])
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = _ids()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] % (V - 1)) + 1
    with torch.no_grad():
        assert torch.equal(model(ids).logits[:, 0], model(changed).logits[:, 0])  # causal as loaded
        make_bidirectional(model)
        assert not torch.equal(model(ids).logits[:, 0], model(changed).logits[:, 0])
    assert all(not m.is_causal for m in model.modules() if hasattr(m, "is_causal"))


def test_verify_refuses_a_model_that_stays_causal(monkeypatch):
    import mdlm.models.hf as hf

    monkeypatch.setattr(hf, "make_bidirectional", lambda model: model)  # simulate a model ignoring is_causal
    with pytest.raises(RuntimeError, match="still causal"):
        _backbone(CAUSAL["llama"])
    bb = _backbone(CAUSAL["llama"], verify=False)
    assert bb.verify_attention(raise_if_causal=False)["bidirectional"] == 0.0


@pytest.mark.parametrize("name,auto_class", [("llama", "causal_lm"), ("gpt2", "causal_lm"), ("bert", "masked_lm")])
def test_save_pretrained_round_trip_in_plain_transformers(tmp_path, name, auto_class):
    cfg = {**CAUSAL, **MASKED}[name]
    bb = _backbone(cfg, auto_class)
    with torch.no_grad():  # move the weights away from their initialisation
        for p in bb.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = bb.save_pretrained(tmp_path / name)
    assert json.loads((path / "config.json").read_text())["is_causal"] is False
    auto = transformers.AutoModelForCausalLM if auto_class == "causal_lm" else transformers.AutoModelForMaskedLM
    loaded = auto.from_pretrained(str(path)).eval()  # plain transformers, sdpa by default
    ids = _ids()
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, 7:] = False  # right padding: default positions are already 0..n-1
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, bb(ids), atol=0, rtol=0)
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask.long()).logits[mask], bb(ids, mask)[mask], atol=1e-6, rtol=1e-5
        )
    again = HFBackbone(V, pretrained=str(path), auto_class=auto_class).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), bb(ids), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2"])  # untied and tied input/output embeddings
def test_vocab_resize(caplog, name):
    with caplog.at_level(logging.INFO, logger="mdlm.models.hf"):
        bb = _backbone(CAUSAL[name], vocab=V + 11)
    assert "resizing the token embeddings from 97 to 108" in caplog.text
    assert bb.model.get_input_embeddings().weight.shape[0] == V + 11
    ids = _ids()
    ids[0, 3] = V + 10  # a new id
    assert bb(ids).shape == (2, L, V + 11)


def test_vocab_mismatch():

    with pytest.raises(ValueError, match=r"vocab_size=90 .*vocabulary of 97"):
        _backbone(CAUSAL["llama"], vocab=90)
    bb = _backbone(CAUSAL["llama"], vocab=90, truncate_vocab=True)
    ids = _ids() % 90
    full = bb.model(input_ids=ids).logits
    torch.testing.assert_close(bb(ids), full[..., :90], atol=0, rtol=0)


def test_config_vocab_defaults_to_the_data_vocab():
    cfg = dict(CAUSAL["llama"])
    del cfg["vocab_size"]
    bb = _backbone(cfg, vocab=53, dtype="auto")
    assert bb.source == "config(model_type='llama')"
    assert bb.model.config.vocab_size == 53 and bb.model.get_input_embeddings().weight.shape[0] == 53
    assert bb(_ids() % 53).shape == (2, L, 53)


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of `pretrained`"):
        HFBackbone(V)
    with pytest.raises(ValueError, match="exactly one of `pretrained`"):
        HFBackbone(V, pretrained="x", config=CAUSAL["llama"])
    with pytest.raises(ValueError, match="not a model type known to transformers"):
        HFBackbone(V, config={"model_type": "no_such_model_type"})
    with pytest.raises(ValueError, match="needs a `model_type`"):
        HFBackbone(V, config={"hidden_size": 32})
    with pytest.raises(ValueError, match="auto_class='seq2seq' must be one of"):
        HFBackbone(V, config=CAUSAL["llama"], auto_class="seq2seq")
    with pytest.raises(ValueError, match="has no AutoModelForMaskedLM model"):
        HFBackbone(V, config=CAUSAL["gpt2"], auto_class="masked_lm")
    with pytest.raises(ValueError, match="not a torch dtype"):
        HFBackbone(V, config=CAUSAL["llama"], dtype="float77")


def test_bf16_gradient_checkpointing_and_block_classes():
    bb = _backbone(CAUSAL["qwen3"], dtype="bfloat16", gradient_checkpointing=True)
    assert {p.dtype for p in bb.parameters()} == {torch.bfloat16}
    assert getattr(bb.model, "is_activation_checkpointing", None) or bb.model.is_gradient_checkpointing
    bb.train()
    bb(_ids()).float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in bb.parameters() if p.requires_grad)
    assert {c.__name__ for c in bb.block_classes()} == {"Qwen3DecoderLayer"}
    assert {c.__name__ for c in _backbone(CAUSAL["gpt2"]).block_classes()} == {"GPT2Block"}


# ---------------------------------------------------------------- remote code (trust_remote_code)
_CONFIG_PY = '''
from transformers import AutoConfig, PretrainedConfig


class {cfg}(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=64, d_model=16, n_layers=2, **kwargs):
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        super().__init__(**kwargs)

    @property
    def hidden_size(self):
        return self.d_model
{register_config}
'''

_MODELING_PY = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .{cfg_module} import {cfg}


class {block}(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, key_mask):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return x + self.out(F.scaled_dot_product_attention(q, k, v, attn_mask={attn_mask}))  # bidirectional


class Inner(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(64, config.d_model)
        self.blocks = nn.ModuleList([{block}(config.d_model) for _ in range(config.n_layers)])
        self.ff_out = nn.Linear(config.d_model, config.vocab_size, bias=False)


class {model}(PreTrainedModel):
    config_class = {cfg}
    base_model_prefix = "model"
    _no_split_modules = ["{block}"]

    def __init__(self, config, model=None, init_params=False):
        super().__init__(config)
        self.model = Inner(config)
        {post_init}

    def get_input_embeddings(self):
        return self.model.wte

    def set_input_embeddings(self, value):
        self.model.wte = value

    def get_output_embeddings(self):
        return self.model.ff_out

    def set_output_embeddings(self, value):
        self.model.ff_out = value

{tie_weights}

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        assert not use_cache
        x = self.model.wte(input_ids) + self.model.pos(torch.arange(input_ids.shape[1], device=input_ids.device))
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, :]
        for block in self.model.blocks:
            x = block(x, key_mask)
        return CausalLMOutputWithPast(logits=self.model.ff_out(x))
{register_model}
'''


def _remote_folder(tmp_path, name: str, legacy: bool):
    """A model folder with its own code via auto_map; ``legacy`` mimics LLaDA's transformers-4.x modeling file."""
    folder = tmp_path / name
    folder.mkdir()
    cfg, model, block = f"{name.title()}Config", f"{name.title()}ModelLM", f"{name.title()}Block"
    # LLaDA's files also register their classes with the Auto* factories when imported
    register_config = f"\n\nAutoConfig.register('mdlm_test_{name}', {cfg})\n" if legacy else ""
    register_model = f"\n\nAutoModel.register({cfg}, {model})\n" if legacy else ""
    (folder / f"configuration_{name}.py").write_text(
        _CONFIG_PY.format(cfg=cfg, model_type=f"mdlm_test_{name}", register_config=register_config)
    )
    (folder / f"modeling_{name}.py").write_text(
        _MODELING_PY.format(
            cfg_module=f"configuration_{name}", cfg=cfg, model=model, block=block,
            # LLaDA: sdpa with attn_mask=None (padding ignored), no post_init(), tie_weights(self) of 4.x
            attn_mask="None" if legacy else "key_mask",
            post_init="" if legacy else "self.post_init()",
            tie_weights=textwrap.indent("def tie_weights(self):\n    pass\n", "    ") if legacy else "",
            register_model=register_model,
        )
    )
    (folder / "config.json").write_text(json.dumps({
        "model_type": f"mdlm_test_{name}", "vocab_size": 64, "d_model": 16, "n_layers": 2,
        "architectures": [model],
        "auto_map": {"AutoConfig": f"configuration_{name}.{cfg}", "AutoModelForCausalLM": f"modeling_{name}.{model}",
                     "AutoModel": f"modeling_{name}.{model}"},
    }))
    config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained(str(folder))
    return folder


def test_trust_remote_code(modules_cache):
    folder = _remote_folder(modules_cache, "tinybi", legacy=False)
    with pytest.raises(ValueError, match="needs `trust_remote_code: true`"):
        HFBackbone(64, pretrained=str(folder))
    bb = HFBackbone(64, pretrained=str(folder), trust_remote_code=True).eval()
    assert bb.remote_code and type(bb.model).__name__ == "TinybiModelLM"
    ids = torch.randint(0, 64, (2, 8))
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(bb(ids), plain(input_ids=ids).logits, atol=0, rtol=0)
    assert {c.__name__ for c in bb.block_classes()} == {"TinybiBlock"}
    resized = HFBackbone(70, pretrained=str(folder), trust_remote_code=True)
    assert resized(ids).shape == (2, 8, 70)


def test_llada_style_legacy_remote_code(modules_cache):
    folder = _remote_folder(modules_cache, "legacy", legacy=True)
    # transformers 5 alone cannot load 4.x code that skips post_init() (as LLaDA's modeling_llada.py does)
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        transformers.AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True)
    with pytest.warns(UserWarning, match="padded positions influence real ones"):
        bb = HFBackbone(64, pretrained=str(folder), trust_remote_code=True).eval()
    assert type(bb.model).__name__ == "LegacyModelLM" and not bb.position_ids_from_mask
    ids = torch.randint(0, 64, (2, 8))
    reference = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=True), trust_remote_code=True
    )
    from safetensors.torch import load_file

    reference.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(bb(ids), reference.eval()(input_ids=ids).logits, atol=0, rtol=0)
    out = bb.save_pretrained(modules_cache / "legacy_out")
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_legacy.LegacyModelLM"  # the original class, not the shim
    again = HFBackbone(64, pretrained=str(out), trust_remote_code=True, verify=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), bb(ids), atol=0, rtol=0)


# ---------------------------------------------------------------- integration with the LightningModule
def test_masked_diffusion_training_step_and_export(tmp_path):
    from torch.utils.data import DataLoader

    from mdlm.module import MaskedDiffusionLM
    from mdlm.samplers import Uniform

    torch.manual_seed(0)
    cfg = dict(CAUSAL["llama"])
    del cfg["vocab_size"]
    model = MaskedDiffusionLM(
        backbone=lambda v: HFBackbone(v, config=dict(cfg)), vocab_size=V, mask_token_id=V - 1, lr=1e-2
    )
    rows = [{"input_ids": ids} for ids in torch.randint(0, V - 1, (8, 12))]
    loader = DataLoader(rows, batch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[Uniform()])
    trainer.fit(model, train_dataloaders=loader)
    assert trainer.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    path = export_pretrained(model, tmp_path / "export")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    ids = _ids()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(ids), atol=0, rtol=0)


def test_yaml_class_path_builds_the_backbone(tmp_path, monkeypatch):
    from mdlm.cli import build_cli

    monkeypatch.chdir(tmp_path)
    config = {
        "model": {"class_path": "mdlm.module.MaskedDiffusionLM", "init_args": {"backbone": {
            "class_path": "mdlm.models.hf.HFBackbone",
            "init_args": {
                "config": {k: v for k, v in CAUSAL["gpt2"].items() if k != "vocab_size"},
                "attn_implementation": "eager",
            },
        }}},
        "data": {
            "class_path": "mdlm.data.parity.ParityDataModule",
            "init_args": {"n": 8, "k": 3, "num_train": 16, "num_val": 8},
        },
        "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False},
    }
    path = tmp_path / "hf.yaml"
    path.write_text(json.dumps(config))
    cli = build_cli(["--config", str(path)], run=False)
    backbone = cli.model.backbone
    assert isinstance(backbone, HFBackbone) and backbone.vocab_size == 3  # linked from the data module
    assert backbone.model.config._attn_implementation == "eager"
