"""AdaptiveBins: sampling by inverse CDF, the adaptive rule on a toy model, state, importance weights, a real fit."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from mdlm.samplers.adaptive import AdaptiveBins

EPS = 1e-3
K = 10


# ---------------------------------------------------------------------- a toy model with known learning
class ToyModel(nn.Module):
    """Predicts token 0 (all data is 0) with margin ``skill[r]`` in rows whose masked fraction lies in
    region r = [lo, hi); 0 elsewhere. Raising a region's skill lowers the loss only at those t."""

    def __init__(self, regions):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device
        self.head = nn.Dropout(0.1)
        self.frozen = nn.Dropout(0.1)
        self.frozen.eval()  # a submodule deliberately in eval mode: must stay so
        self.mask_token_id = 2
        self.suppressed = [2]
        self.skill = {r: 0.0 for r in regions}
        self.forward_modes = []
        self.logged = {}

    def forward(self, noisy, attention_mask=None):
        self.forward_modes.append((self.training, self.head.training))
        B, L = noisy.shape
        frac = (noisy == self.mask_token_id).double().mean(-1)
        margin = torch.zeros(B, dtype=torch.float64)
        for (lo, hi), s in self.skill.items():
            margin = torch.where((frac >= lo) & (frac < hi), torch.full_like(margin, s), margin)
        logits = torch.zeros(B, L, 3, dtype=torch.float32)
        logits[..., 0] = margin.float().unsqueeze(1) + 0 * self.anchor
        return logits

    def log(self, name, value, **kwargs):
        self.logged.setdefault(name, []).append(value)


def _batch(P=32, L=400):
    return {"input_ids": torch.zeros(P, L, dtype=torch.long)}


def _run(sampler, model, schedule, update_every=5):
    """Call the hooks like a Trainer: baseline at the first batch start, then an update every
    ``update_every`` steps; ``schedule(i)`` changes the model's skill before update i."""
    trainer = SimpleNamespace(global_step=0, logger=None, is_global_zero=True)
    batch = _batch()
    sampler.on_train_batch_start(trainer, model, batch, 0)
    for i in range(1, len(schedule) + 1):
        schedule[i - 1](model)
        for _ in range(update_every):
            trainer.global_step += 1
            sampler.on_train_batch_end(trainer, model, None, batch, 0)
    return sampler


def _improve(region, by=0.5):
    def change(model):
        model.skill[region] += by

    return change


REGION = (0.2, 0.3)


def test_mass_moves_to_the_bin_that_is_learning_and_no_bin_starves():
    model = ToyModel([REGION])
    s = _run(AdaptiveBins(update_every=5, seed=0, min_prob=0.02), model, [_improve(REGION)] * 6)
    assert s.num_updates == 6
    q = s.probs
    assert q.sum().item() == pytest.approx(1.0)
    assert int(q.argmax()) == 2  # bin [0.2, 0.3]
    assert q[2] > 0.3 and q[2] > 4 * torch.cat([q[:2], q[3:]]).max()
    assert q.min() >= 0.02 - 1e-12
    # the signal is largest in bin 2 and the probe loss fell there only
    assert int(s.signal.argmax()) == 2
    first, last = torch.tensor(s.history[0]["probe_losses"], dtype=torch.float64), s.probe_losses
    assert last[2] < 0.6 * first[2]
    assert torch.allclose(last[[0, 5, 6, 7, 8, 9]], first[[0, 5, 6, 7, 8, 9]])
    # mean draws follow q
    t = s.draw(20_000, 0.0, step=0).double()
    assert ((t >= 0.2) & (t < 0.3)).double().mean().item() == pytest.approx(float(q[2]), abs=0.015)


def test_allocation_follows_learning_when_it_moves():
    model = ToyModel([REGION, (0.6, 0.7)])
    s = AdaptiveBins(update_every=5, seed=0, smoothing=0.5)
    _run(s, model, [_improve(REGION)] * 4)
    assert int(s.probs.argmax()) == 2
    _run_more = [_improve((0.6, 0.7))] * 4  # bin 2 has saturated, bin 6 starts learning (grokking-like)
    trainer = SimpleNamespace(global_step=20, logger=None, is_global_zero=True)
    for change in _run_more:
        change(model)
        for _ in range(5):
            trainer.global_step += 1
            s.on_train_batch_end(trainer, model, None, _batch(), 0)
    assert int(s.probs.argmax()) == 6
    assert s.probs[2] < 0.15


def test_probe_cost_eval_mode_and_logging():
    model = ToyModel([REGION])
    model.train()
    model.frozen.eval()
    s = _run(AdaptiveBins(update_every=5, seed=0, log_every_n_steps=5), model, [_improve(REGION)] * 3)
    P, L = 32, 400
    assert s.extra_forward_passes == 4 * K  # baseline + 3 updates, num_bins forwards each
    assert s.extra_forward_tokens == 4 * K * P * L
    assert model.forward_modes and all(mode == (False, False) for mode in model.forward_modes)
    assert model.training and model.head.training and not model.frozen.training  # flags restored
    assert len(model.logged["adaptive/prob_bin02"]) == 3
    assert model.logged["adaptive/prob_bin02"][-1] == pytest.approx(float(s.probs[2]))
    assert "adaptive/probe_nelbo" in model.logged and "adaptive/extra_forward_tokens" in model.logged
    # no update between multiples of update_every, and none twice at the same step (accumulation)
    trainer = SimpleNamespace(global_step=15, logger=None, is_global_zero=True)
    s.on_train_batch_end(trainer, model, None, _batch(), 0)
    trainer.global_step = 17
    s.on_train_batch_end(trainer, model, None, _batch(), 0)
    assert s.num_updates == 3


def test_probe_size_keeps_the_first_sequences_fixed():
    s = AdaptiveBins(probe_size=4, seed=0)
    batch = {"input_ids": torch.arange(24).reshape(8, 3), "maskable": torch.ones(8, 3, dtype=torch.bool), "other": 1}
    s.set_probe(batch)
    assert torch.equal(s.probe["input_ids"], batch["input_ids"][:4]) and set(s.probe) == {"input_ids", "maskable"}
    with pytest.warns(UserWarning, match=r"probe_size=4\) exceeds the probe batch's 2 sequences"):
        s.set_probe({"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="needs dict batches with 'input_ids'"):
        s.set_probe(torch.zeros(2, 3))


def test_initial_distribution_is_the_target_uniform():
    s = AdaptiveBins(seed=0)
    assert torch.allclose(s.probs, s.target_probs)
    assert s.target_probs[0] == pytest.approx((0.1 - EPS) / (1 - EPS)) and s.target_probs.sum() == pytest.approx(1.0)
    assert s.mean() == pytest.approx((EPS + 1) / 2, abs=1e-5)
    t = s.draw(50_000, 0.0, step=0).double()
    assert t.min() >= EPS and t.mean().item() == pytest.approx((EPS + 1) / 2, abs=0.006)
    s_imp = AdaptiveBins(mode="importance", seed=0)
    s_imp.draw(64, 0.0, step=0)
    assert torch.allclose(s_imp.importance_weights, torch.ones(64))
    assert s.importance_weights is None  # distribution mode


def test_allocation_rule_floor_and_scale_invariance():
    s = AdaptiveBins(min_prob=0.03, temperature=0.5, min_signal=0.0)
    signal = torch.tensor([0.0, 0.0, 5.0, 0.0, -2.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    q = s.allocation(signal)
    assert q.sum().item() == pytest.approx(1.0) and q.min() >= 0.03 - 1e-12
    assert torch.allclose(q, s.allocation(signal * 1e-4))  # the signal's scale does not matter
    assert torch.allclose(s.allocation(torch.zeros(K)), (1 - K * 0.03) * s.target_probs + 0.03)
    # the analytic form: tilted softmax of s / (tau * max|s|), floored
    z = signal / (0.5 * 5.0) + s.target_probs.log()
    assert torch.allclose(q, (1 - K * 0.03) * torch.softmax(z, 0) + 0.03)
    # min_signal: signals below it are damped proportionally, so q -> p as the signal vanishes
    damped = AdaptiveBins(min_prob=0.03, temperature=0.5, min_signal=50.0)
    assert torch.allclose(damped.allocation(signal * 10), q)  # max|s| = 50 >= min_signal: unchanged
    z_small = signal / (0.5 * 50.0) + s.target_probs.log()
    assert torch.allclose(damped.allocation(signal), (1 - K * 0.03) * torch.softmax(z_small, 0) + 0.03)
    assert (damped.allocation(signal * 1e-6) - damped.allocation(torch.zeros(K))).abs().max() < 1e-6
    # an extreme signal still leaves every bin at least min_prob
    assert s.allocation(torch.tensor([1e6] + [0.0] * 9)).min() >= 0.03 - 1e-12


def test_sampling_is_an_inverse_cdf_of_the_bin_probabilities():
    s = AdaptiveBins(seed=1, stratified=True)
    s.probs = torch.tensor([0.05, 0.05, 0.4, 0.05, 0.05, 0.1, 0.1, 0.1, 0.05, 0.05], dtype=torch.float64)
    u = s.uniforms(1000, step=0)
    t = s.sample(u, 0.0)
    counts = torch.bincount(s.bin_of(u), minlength=K)
    assert torch.equal(counts, (s.probs * 1000).round().long())  # exact under stratification
    bins = torch.clamp((t * K).floor().long(), max=K - 1)
    assert torch.equal(bins, s.bin_of(u))
    assert torch.all(torch.diff(s.sample(torch.sort(u).values, 0.0)) >= 0)
    assert s.mean() == pytest.approx(s.analytic_mean(), abs=1e-6)
    s.probs = torch.tensor([0.5, 0, 0, 0, 0, 0, 0, 0, 0, 0.5], dtype=torch.float64)  # zero-probability bins
    t = s.draw(10_000, 0.0, step=1).double()
    assert not torch.any((t > 0.1 + 1e-6) & (t < 0.9 - 1e-6))
    assert s.support() == pytest.approx((EPS, 1.0))


def test_deterministic_under_the_seed():
    def run(seed):
        return _run(AdaptiveBins(update_every=5, seed=seed), ToyModel([REGION]), [_improve(REGION)] * 3)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.probe_losses, b.probe_losses)
    assert a.history == b.history
    assert torch.equal(a.draw(64, 0.3, step=9), b.draw(64, 0.3, step=9))
    assert not torch.equal(a.probe_losses, c.probe_losses)  # the probe masks are keyed by the seed


def test_state_round_trip_continues_identically():
    model_a, model_b = ToyModel([REGION]), ToyModel([REGION])
    a = _run(AdaptiveBins(update_every=5, seed=3, mode="importance"), model_a, [_improve(REGION)] * 3)
    _run(AdaptiveBins(update_every=5, seed=3), model_b, [_improve(REGION)] * 3)  # same model state
    state = a.state_dict()
    assert {"probs", "signal", "probe_losses", "probe", "num_updates", "extra_forward_tokens"} <= set(state)
    fresh = AdaptiveBins(update_every=5, seed=999, mode="importance")
    fresh.load_state_dict(state)
    assert fresh.seed == 3 and fresh.num_updates == 3 and fresh.extra_forward_tokens == a.extra_forward_tokens
    assert torch.equal(fresh.probs, a.probs) and torch.equal(fresh.probe_losses, a.probe_losses)
    assert torch.equal(fresh.probe["input_ids"], a.probe["input_ids"])
    assert torch.equal(fresh.draw(32, 0.0, step=4), a.draw(32, 0.0, step=4))
    assert torch.equal(fresh.importance_weights, a.importance_weights)
    # one more update on both: identical (the resumed run needs no new probe or baseline)
    trainer = SimpleNamespace(global_step=20, logger=None, is_global_zero=True)
    for s in (a, fresh):
        model_b.skill[REGION] = model_a.skill[REGION] + 0.5
        s.on_train_batch_end(trainer, model_b, None, {"input_ids": torch.ones(4, 7, dtype=torch.long)}, 0)
    assert torch.equal(fresh.probs, a.probs) and fresh.num_updates == a.num_updates == 4
    with pytest.raises(ValueError, match="checkpoint has num_bins=10 but this AdaptiveBins has num_bins=5"):
        AdaptiveBins(num_bins=5).load_state_dict(state)


def test_importance_weights_average_to_one_and_unbias_the_loss():
    s = AdaptiveBins(mode="importance", seed=2, min_prob=0.02)
    s.probs = s.allocation(torch.tensor([0.0, 0.3, 1.0, 0.2, 0.0, -0.1, 0.0, 0.0, 0.1, 0.0], dtype=torch.float64))
    assert s.probs.max() > 0.3  # a strongly non-uniform proposal
    # exact: E_q[w] = sum_j q_j p_j / q_j = 1, on a fine midpoint grid of u
    n = 200_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    t = s.sample(u, 0.0)
    w = s.weights_for_bins(s.bin_of(u))
    assert w.mean().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(w, s.importance_weight(t))
    assert w.max().item() <= (0.1 / 0.02) + 1e-9  # bounded by p_j / min_prob

    # unbiased for a toy per-t loss: E_q[w f(t)] = E_{U[eps,1]}[f(t)]
    def f(x):
        return 7 * x * (1 - x) ** 6 + 1.0 / (1 + 10 * x)

    grid = torch.linspace(EPS, 1, 400_001, dtype=torch.float64)
    target = torch.trapezoid(f(grid), grid).item() / (1 - EPS)
    assert (w * f(t)).mean().item() == pytest.approx(target, abs=1e-4)
    assert abs(f(t).mean().item() - target) > 0.02  # unweighted, q is biased

    # Monte Carlo through draw(): keyed uniforms over several steps
    ws, fs = [], []
    for step in range(10):
        tt = s.draw(10_000, 0.0, step=step).double()
        ws.append(s.importance_weights.double())
        fs.append(f(tt))
    ws, fs = torch.cat(ws), torch.cat(fs)
    se = (ws * fs).std().item() / math.sqrt(ws.numel())
    assert ws.mean().item() == pytest.approx(1.0, abs=4 * ws.std().item() / math.sqrt(ws.numel()))
    assert (ws * fs).mean().item() == pytest.approx(target, abs=4 * se)


def test_draw_batch_hands_the_module_the_importance_weights_of_its_draw():
    probs = AdaptiveBins().allocation(torch.linspace(-1, 1, K, dtype=torch.float64))
    for mode in ("importance", "distribution"):
        a, b = AdaptiveBins(mode=mode, seed=4), AdaptiveBins(mode=mode, seed=4)
        a.probs = b.probs = probs
        draw = a.draw_batch((64, 5), 0.0, step=3)
        assert torch.equal(draw.t, b.draw(64, 0.0, step=3))
        assert torch.equal(draw.uniforms, b.mask_uniforms((64, 5), 3))
        if mode == "importance":
            assert draw.weights is a.importance_weights and torch.equal(draw.weights, b.importance_weights)
            bins = torch.clamp((draw.t.double() * K).floor().long(), max=K - 1)
            assert torch.allclose(draw.weights.double(), (a.target_probs / probs)[bins], rtol=1e-6)
        else:
            assert draw.weights is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_bins": 1}, r"num_bins=1 must be an integer >= 2"),
        ({"num_bins": 2000}, r"eps=0.001 leaves bin 0 .* empty: need eps < 1/num_bins"),
        ({"update_every": 0}, r"update_every=0 must be an integer >= 1"),
        ({"mode": "weights"}, r"mode='weights' must be one of \('distribution', 'importance'\)"),
        ({"temperature": 0.0}, r"temperature=0.0 must be > 0"),
        ({"smoothing": 1.0}, r"smoothing=1.0 must lie in \[0, 1\)"),
        ({"min_prob": 0.1}, r"min_prob=0.1 must lie in \[0, 1/num_bins\) = \[0, 0.1\)"),
        ({"min_prob": -0.01}, r"min_prob=-0.01"),
        ({"probe_size": 0}, r"probe_size=0 must be a positive integer or None"),
        ({"min_signal": -1.0}, r"min_signal=-1.0 must be >= 0"),
        ({"probe_source": "test"}, r"probe_source='test' must be one of \('train', 'val'\)"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveBins(**kwargs)


def test_update_checks_the_number_of_losses():
    with pytest.raises(ValueError, match=r"losses has shape \(3,\), expected \(10,\)"):
        AdaptiveBins().update(torch.ones(3))
    with pytest.raises(RuntimeError, match="needs a probe"):
        AdaptiveBins().measure(ToyModel([REGION]))


# ---------------------------------------------------------------------- a real Lightning fit
@pytest.mark.parametrize("mode, probe_source", [("distribution", "train"), ("importance", "val")])
def test_real_trainer_fit_runs_and_updates(tmp_path, mode, probe_source):
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    from mdlm.data.parity import ParityDataModule
    from mdlm.models.transformer import Transformer
    from mdlm.module import MaskedDiffusionLM

    seed_everything(0, verbose=False)
    model = MaskedDiffusionLM(
        backbone=lambda v: Transformer(v, n_layer=1, n_head=2, d_model=32), vocab_size=3, mask_token_id=2
    )
    data = ParityDataModule(n=8, k=2, num_train=64, num_val=16, batch_size=16)
    sampler = AdaptiveBins(update_every=5, mode=mode, probe_source=probe_source, log_every_n_steps=5)
    trainer = Trainer(
        max_steps=20,
        limit_val_batches=0,
        logger=TensorBoardLogger(str(tmp_path), name="tb") if mode == "distribution" else False,
        log_every_n_steps=5,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[sampler],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 20
    assert sampler.num_updates == 4  # steps 5, 10, 15, 20 (plus the baseline at step 0)
    assert [h["step"] for h in sampler.history] == [0, 5, 10, 15, 20]
    assert sampler.extra_forward_tokens == 5 * K * 16 * 9 and sampler.extra_forward_passes == 5 * K
    assert sampler.probe["input_ids"].shape == (16, 9)
    if probe_source == "val":  # held-out: the validation set's first sequences
        assert torch.equal(sampler.probe["input_ids"].cpu(), data.val_set.tokens[:16])
    assert torch.isfinite(sampler.probe_losses).all() and sampler.probe_losses.gt(0).all()
    assert sampler.probs.sum().item() == pytest.approx(1.0) and sampler.probs.min() >= sampler.min_prob - 1e-12
    assert not torch.allclose(sampler.probs, sampler.target_probs)  # it moved
    assert model.training  # train mode restored after the probe forwards
    assert "adaptive/prob_bin00" in trainer.callback_metrics
    if mode == "importance":
        assert sampler.importance_weights.shape == (16,)
        # the last draw (step 19) used q before the update at step 20: its weights are p/q_prev
        q_prev = torch.tensor(sampler.history[-2]["probs"], dtype=torch.float64)
        bins = torch.clamp((sampler.last_t.double() * K).floor().long(), max=K - 1)
        expected = (sampler.target_probs / q_prev)[bins]
        assert torch.allclose(sampler.importance_weights.double(), expected, rtol=1e-6)
    if mode == "distribution":  # the allocation reaches TensorBoard: scalars and a histogram per update
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(trainer.logger.log_dir), size_guidance={"histograms": 0, "scalars": 0})
        events.Reload()
        assert [e.step for e in events.Histograms("adaptive/allocation")] == [5, 10, 15, 20]
        assert len(events.Scalars("adaptive/prob_bin02")) >= 3
    # the callback state, probe included, goes into checkpoints
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "AdaptiveBins" in k]
    assert state["num_updates"] == 4 and torch.equal(state["probe"]["input_ids"], sampler.probe["input_ids"].cpu())
