import pytest
import torch

from mdlm.data.parity import MASK_TOKEN_ID, ParityDataModule, draw_secret


def test_labels_are_the_xor_of_the_secret_bits():
    dm = ParityDataModule(n=12, k=5, num_train=300, num_val=200, seed=3)
    dm.setup("fit")
    assert len(dm.secret) == 5 and len(set(dm.secret)) == 5 and all(0 <= s < 12 for s in dm.secret)
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        for row in ds.tokens.tolist():
            bits, label = row[:12], row[12]
            xor = 0
            for s in dm.secret:
                xor ^= bits[s]
            assert label == xor
    # the label is balanced and depends on the secret
    assert 0.4 < dm.train_set.tokens[:, -1].float().mean() < 0.6


def test_validation_is_fresh_and_deterministic():
    dm = ParityDataModule(n=10, k=3, num_train=500, num_val=300, seed=1)
    dm.setup("fit")
    train = {tuple(r) for r in dm.train_set.tokens[:, :10].tolist()}
    val = [tuple(r) for r in dm.val_set.tokens[:, :10].tolist()]
    assert len(train) == 500 and len(set(val)) == 300 and not train & set(val)
    dm2 = ParityDataModule(n=10, k=3, num_train=500, num_val=300, seed=1)
    dm2.setup("fit")
    assert torch.equal(dm.train_set.tokens, dm2.train_set.tokens) and dm.secret == dm2.secret
    assert draw_secret(10, 3, 1) != draw_secret(10, 3, 2) or draw_secret(10, 3, 1) != draw_secret(10, 3, 4)


def test_batches_carry_query_mask_and_global_index():
    dm = ParityDataModule(n=8, k=2, num_train=64, num_val=40, seed=0, batch_size=16, eval_batch_size=7)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["input_ids"].shape == (7, 9)
    assert batch["query_mask"][:, -1].all() and not batch["query_mask"][:, :-1].any()
    assert batch["index"].tolist() == list(range(10_000_000, 10_000_007))
    assert dm.vocab_size == 3 and dm.mask_token_id == MASK_TOKEN_ID
    pred = next(iter(dm.predict_dataloader()))
    assert (pred["input_ids"][:, -1] == MASK_TOKEN_ID).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=5, k=6), r"k=6 must lie in \[1, n=5\]"),
        (dict(n=5, k=0), r"k=0"),
        (dict(n=0, k=1), r"n=0"),
        (dict(n=4, k=2, num_train=10, num_val=10), r"exceeds the 2\^4 = 16 distinct inputs"),
        (dict(num_train=0), r"num_train=0"),
        (dict(batch_size=0), r"batch_size=0"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParityDataModule(**kwargs)
