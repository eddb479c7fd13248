"""LLaDA and Dream through their published code's traits: the stand-ins of :mod:`mdlm.testing.standins`.

Each test pins one way the paper's 8B route broke with the real remote code (bf16-true validation is
in ``test_metrics_precision.py``, the sharded load in ``test_loading.py``): meta init that allocates,
the HF checkpointing switch LLaDA refuses, random init of remote code from a config folder, padding
that leaks into LLaDA's attention, Dream's transformers-5 incompatibilities, 4D mask and shifted logits.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mdlm.models.families import FAMILIES, detect_family
from mdlm.models.hf import HFBackbone
from mdlm.models.meta_init import allocated_bytes, force_device
from mdlm.testing.standins import make_folder

V = 100  # the stand-ins' vocabulary; LLaDA's embedding is padded to 128 rows


@pytest.fixture(scope="module")
def folders(modules_cache):
    return {
        kind: make_folder(kind, modules_cache / kind, weights=True, max_shard_size="40KB")
        for kind in ("llada", "dream")
    }


def _backbone(folder, **kwargs) -> HFBackbone:
    kwargs.setdefault("truncate_vocab", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LLaDA's padding warning is tested on its own
        return HFBackbone(V, pretrained=str(folder), trust_remote_code=True, **kwargs).eval()


def _raw_model(folder):
    """The remote class loaded by transformers alone (plus the shims it cannot load without)."""
    return _backbone(folder, verify=False).model


def test_families_are_detected_from_model_type(folders):
    assert _backbone(folders["llada"]).family is FAMILIES["llada"]
    assert _backbone(folders["dream"]).family is FAMILIES["dream"]
    assert detect_family(object()) is FAMILIES["transformers"]


def test_the_folders_hold_sharded_safetensors(folders):
    for folder in folders.values():
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1


# ---------------------------------------------------------------- meta init (failure 2)
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_meta_init_of_a_pretrained_remote_model_allocates_nothing(folders, kind):
    with torch.device("meta"):
        backbone = HFBackbone(V, pretrained=str(folders[kind]), trust_remote_code=True, truncate_vocab=True)
    assert allocated_bytes(backbone) == 0
    assert backbone.pretrained_folder == str(folders[kind])
    assert all(p.is_meta for p in backbone.parameters())


def test_a_plain_meta_context_does_not_keep_llada_unallocated(folders):
    """Why force_device exists: LLaDA's constructor pins device='cpu' for every layer."""
    model = _raw_model(folders["llada"])
    with torch.device("meta"):
        plain = type(model)(model.config)
    assert allocated_bytes(plain) > 0
    with force_device("meta"):
        forced = type(model)(model.config)
    assert allocated_bytes(forced) == 0


# ---------------------------------------------------------------- checkpointing (failure 3)
def test_llada_gradient_checkpointing_uses_mdlms_own_per_block_checkpointing(folders):
    ids = torch.randint(0, V - 2, (2, 10))
    grads = []
    for checkpointing in (False, True):
        backbone = _backbone(folders["llada"], gradient_checkpointing=checkpointing, verify=False).train()
        backbone(ids).float().pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in backbone.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- remote code from a config (failure 4)
def test_random_init_of_remote_code_from_a_folder_with_code_and_config_only(modules_cache):
    folder = make_folder("llada", modules_cache / "code_only", n_layers=3)
    assert not list(folder.glob("*.safetensors"))
    backbone = HFBackbone(V, config=str(folder), trust_remote_code=True, truncate_vocab=True, verify=False)
    assert type(backbone.model).__name__ == "LLaDAModelLM" and len(backbone.model.model.transformer.blocks) == 3
    assert backbone.mask_token_id is None  # built from scratch: the data chooses [MASK]
    small = HFBackbone(V, config=str(folder), config_overrides={"n_layers": 1}, trust_remote_code=True,
                       truncate_vocab=True, verify=False)
    assert len(small.model.model.transformer.blocks) == 1
    assert backbone(torch.randint(0, V, (1, 6))).shape == (1, 6, V)
    with pytest.raises(ValueError, match="trust_remote_code"):
        HFBackbone(V, config=str(folder), truncate_vocab=True)


def test_llada_refuses_sdpa_and_is_not_asked_for_it(folders):
    with pytest.raises(ValueError, match="(?i)sdpa|attention"):
        _backbone(folders["llada"], attn_implementation="sdpa")
    assert _backbone(folders["llada"]).model.config._attn_implementation != "sdpa"


# ---------------------------------------------------------------- padding (failure 5)
def test_llada_padding_leak_is_measured_and_recorded(folders):
    with pytest.warns(UserWarning, match="padded positions influence real ones"):
        backbone = HFBackbone(V, pretrained=str(folders["llada"]), trust_remote_code=True, truncate_vocab=True)
    assert backbone.padding_hidden is False
    assert backbone.verify_attention()["padding_leak"] > 0.01


def test_a_padding_blind_module_refuses_hidden_padding_in_training_batches(folders):
    from mdlm.module import MaskedDiffusionLM

    model = MaskedDiffusionLM(backbone=lambda v: _backbone(folders["llada"]), vocab_size=V, mask_token_id=99)
    assert model.padding_hidden is False
    ids = torch.randint(0, 98, (2, 6))
    full = torch.ones(2, 6, dtype=torch.bool)
    assert model._batch_parts({"input_ids": ids, "attention_mask": full})[0] is ids
    with pytest.raises(ValueError, match="ignores attention_mask"):
        model._batch_parts({"input_ids": ids, "attention_mask": full.index_fill(1, torch.tensor([0]), False)})


def test_llada_generation_of_a_prompt_does_not_depend_on_its_batch_mates(folders):
    from mdlm.generation import generate
    from mdlm.module import MaskedDiffusionLM

    model = MaskedDiffusionLM(backbone=lambda v: _backbone(folders["llada"]), vocab_size=V, mask_token_id=99).eval()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    kwargs = dict(mask_token_id=99, pad_token_id=98, gen_length=8, steps=8, block_length=8)
    alone = generate(model, [prompts[0]], **kwargs).tokens[0]
    batched = generate(model, prompts, **kwargs).tokens[0]
    assert torch.equal(alone, batched)


def test_the_mask_id_of_a_pretrained_family_must_match_the_data(folders):
    from mdlm.module import MaskedDiffusionLM

    with pytest.raises(ValueError, match="mask_token_id=97 .* 99"):
        MaskedDiffusionLM(backbone=lambda v: _backbone(folders["llada"]), vocab_size=V, mask_token_id=97)


# ---------------------------------------------------------------- Dream (failure 6)
def test_dream_loads_saves_and_reloads_under_transformers_5(folders, modules_cache):
    backbone = _backbone(folders["dream"])
    out = backbone.save_pretrained(modules_cache / "dream_saved")
    again = _backbone(out)
    ids = torch.randint(0, V - 2, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), backbone(ids), rtol=0, atol=0)


def test_dream_logits_are_shifted_so_position_i_scores_token_i(folders):
    backbone = _backbone(folders["dream"])
    ids = torch.randint(0, V - 2, (2, 9))
    with torch.no_grad():
        raw = backbone.model(input_ids=ids).logits
        ours = backbone(ids)
    torch.testing.assert_close(ours[:, 1:], raw[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(ours[:, 0], raw[:, 0], rtol=0, atol=0)


def test_dream_gets_a_4d_mask_and_positions_so_left_padding_is_hidden(folders):
    backbone = _backbone(folders["dream"])
    assert backbone.padding_hidden is True and backbone.position_ids_from_mask
    ids = torch.randint(0, V - 2, (1, 6))
    padded = torch.cat([torch.full((1, 3), 98), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(backbone(padded, mask)[:, 3 + 1 :], backbone(ids)[:, 1:], rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError):  # the layers take the mask as given: a 2D one fails
            backbone.model(input_ids=padded, attention_mask=mask.long())
