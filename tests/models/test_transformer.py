import pytest
import torch

from mdlm.models.transformer import PRESETS, Transformer


@pytest.mark.parametrize("positional", ["rotary", "learned"])
def test_bidirectional_every_position_sees_the_future(positional):
    torch.manual_seed(0)
    model = Transformer(vocab_size=11, positional=positional).eval()
    ids = torch.randint(0, 11, (1, 9))
    base = model(ids)
    for j in range(1, 9):
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 1) % 11
        out = model(changed)
        for i in range(j):
            assert not torch.allclose(out[0, i], base[0, i]), f"logits at {i} ignore token {j}"


def test_padding_mask_hides_padded_keys():
    torch.manual_seed(0)
    model = Transformer(vocab_size=13).eval()
    ids = torch.randint(0, 13, (1, 6))
    mask = torch.tensor([[True, True, True, True, False, False]])
    a = model(ids, attention_mask=mask)
    other = ids.clone()
    other[0, 4:] = (other[0, 4:] + 3) % 13
    b = model(other, attention_mask=mask)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6)
    # and without the mask the padded content matters
    assert not torch.allclose(model(ids)[0, :4], model(other)[0, :4])


def test_rotary_scores_depend_only_on_relative_offset():
    """<R_m q, R_n k> = <R_{m+s} q, R_{n+s} k> and rotations preserve norms."""
    from mdlm.models.transformer import apply_rotary, rotary_tables

    torch.manual_seed(0)
    cos, sin = rotary_tables(64, 16)
    q, k = torch.randn(16), torch.randn(16)

    def at(v, pos):
        x = torch.zeros(1, 1, 64, 16)
        x[0, 0, pos] = v
        return apply_rotary(x, cos, sin)[0, 0, pos]

    for m, n, shift in ((3, 10, 5), (0, 7, 40), (20, 2, 11)):
        a = at(q, m) @ at(k, n)
        b = at(q, m + shift) @ at(k, n + shift)
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(at(q, m).norm(), q.norm(), atol=1e-5)
    assert not torch.allclose(at(q, 3) @ at(k, 10), at(q, 3) @ at(k, 11))


def test_presets_and_parameter_counts():
    for name, cfg in PRESETS.items():
        model = Transformer(vocab_size=100, preset=name, positional="learned") if name in ("tiny", "small") else None
        if model is None:
            with torch.device("meta"):
                model = Transformer(vocab_size=100, preset=name)
        d, n = cfg["d_model"], cfg["n_layer"]
        expected = n * (12 * d * d + 2 * d) + d + 100 * d  # blocks + norms + final norm + head
        assert model.num_parameters(non_embedding=True) == expected
    assert Transformer(vocab_size=100, preset="tiny", d_model=64, n_head=2).d_model == 64


def test_bad_arguments():
    with pytest.raises(ValueError, match="preset='huge'"):
        Transformer(vocab_size=10, preset="huge")
    with pytest.raises(ValueError, match="d_model=130 is not divisible by n_head=4"):
        Transformer(vocab_size=10, d_model=130)
    with pytest.raises(ValueError, match="positional='alibi'"):
        Transformer(vocab_size=10, positional="alibi")
    with pytest.raises(ValueError, match="exceeds max_seq_len=8"):
        Transformer(vocab_size=10, max_seq_len=8)(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("positional", ["rotary", "learned"])
def test_left_padding_does_not_change_real_positions(positional):
    torch.manual_seed(0)
    model = Transformer(vocab_size=13, positional=positional).eval()
    ids = torch.randint(0, 13, (1, 5))
    alone = model(ids)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 5])
    out = model(padded, attention_mask=mask)
    assert torch.allclose(out[0, 3:], alone[0], atol=1e-5)


# ------------------------------------------------------------------ block KV cache
def _canvas(vocab: int, mask_id: int):
    """Two left-padded rows: prompt, a half-decoded current block [10, 16), a masked suffix."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab - 1, (2, 24), generator=gen)
    ids[:, 13:] = mask_id
    ids[0, 14] = 5  # a committed token inside the block
    attn = torch.ones(2, 24, dtype=torch.bool)
    attn[1, :3] = False
    return ids, attn


@pytest.mark.parametrize("positional", ["rotary", "learned"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_block_cache_span_forward_equals_full_forward(positional, mode):
    """Keys/values from the same canvas state: the cached forward of the current block (dual) or
    of the block and everything after it (prefix) gives the full forward's logits there."""
    from mdlm.models.kv_cache import KVCache

    torch.manual_seed(0)
    model = Transformer(vocab_size=17, positional=positional, max_seq_len=32).eval()
    ids, attn = _canvas(17, 16)
    start, end = 10, 16
    with torch.no_grad():
        cache = KVCache()
        full = model(ids, attention_mask=attn, kv_cache=cache)
        assert torch.equal(full, model(ids, attention_mask=attn))  # recording changes nothing
        assert cache.length == 24 and len(cache.keys) == model.n_layer
        hi = end if mode == "dual" else 24
        if mode == "prefix":
            cache.crop(start)
        span = model(ids[:, start:hi], attention_mask=attn, kv_cache=cache, kv_start=start)
    assert span.shape == (2, hi - start, 17)
    torch.testing.assert_close(span, full[:, start:hi], rtol=0, atol=1e-5)


def test_block_cache_is_used_when_stale():
    """A cache from an earlier state (block fully masked) gives other logits than the full forward
    of the current state, and equal ones to the full forward of a canvas whose keys/values outside
    the span are the stale ones — i.e. the cache, not the tokens, supplies them."""
    from mdlm.models.kv_cache import KVCache

    torch.manual_seed(0)
    model = Transformer(vocab_size=17, max_seq_len=32).eval()
    ids, attn = _canvas(17, 16)
    earlier = ids.clone()
    earlier[:, 10:16] = 16
    with torch.no_grad():
        cache = KVCache()
        model(earlier, attention_mask=attn, kv_cache=cache)
        stale = model(ids[:, 10:16], attention_mask=attn, kv_cache=cache, kv_start=10)
        exact = model(ids, attention_mask=attn)[:, 10:16]
        again = model(earlier[:, 10:16], attention_mask=attn, kv_cache=cache, kv_start=10)
        assert not torch.allclose(stale, exact, atol=1e-4)
        torch.testing.assert_close(again, model(earlier, attention_mask=attn)[:, 10:16], rtol=0, atol=1e-5)


def test_block_cache_errors():
    from mdlm.models.kv_cache import KVCache

    model = Transformer(vocab_size=17, max_seq_len=32).eval()
    ids = torch.randint(0, 16, (2, 12))
    with torch.no_grad():
        with pytest.raises(ValueError, match="kv_start needs a kv_cache"):
            model(ids[:, 4:], kv_start=4)
        cache = KVCache()
        model(ids, kv_cache=cache)
        with pytest.raises(ValueError, match=r"kv_start=13 must lie in \[0, 12\]"):
            model(ids[:, :2], kv_cache=cache, kv_start=13)
        with pytest.raises(ValueError, match=r"the KV cache has batch size 2 but input_ids have 1 rows"):
            model(ids[:1, 4:8], kv_cache=cache, kv_start=4)
        with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\); it must cover the whole canvas \[2, 12\]"):
            model(ids[:, 4:8], attention_mask=torch.ones(2, 4, dtype=torch.bool), kv_cache=cache, kv_start=4)
