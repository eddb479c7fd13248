"""The LightningModule: a backbone, the MD objective, evaluation metrics and the optimiser."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
from lightning.pytorch import LightningModule

from mdlm.answers import AnswerAccuracy, extract_answer, is_correct
from mdlm.data.contract import MDLMDataModule
from mdlm.data.tokenizer import CHECKPOINT_KEY as TOKENIZER_CHECKPOINT_KEY
from mdlm.generation import generate, get_preset
from mdlm.metrics import NELBO, TokenAccuracy
from mdlm.normalizer import GlobalBatchNormalizer
from mdlm.objective import (
    LossWeight,
    Normalization,
    check_loss_options,
    denoiser_nll,
    mask_tokens,
    md_loss_parts,
    nelbo_sums,
    suppress_tokens,
)
from mdlm.optim import lr_factor, parameter_groups
from mdlm.rng import keyed_uniform
from mdlm.samplers.base import MaskRatioSampler, global_batch_rows, training_progress

#: a backbone factory: called with the vocabulary size, returns a module mapping
#: ``(input_ids [B, L], attention_mask [B, L] | None) -> logits [B, L, V]``
BackboneFactory = Callable[[int], nn.Module]

STREAM_EVAL_T = 0xE7A1
STREAM_EVAL_MASK = 0xE3A5
GOLDEN_FRACTION = (math.sqrt(5.0) - 1.0) / 2.0

Objective = Literal["masked_diffusion", "output_supervision"]


def evaluation_t(index: torch.Tensor, seed: int, eps: float) -> torch.Tensor:
    r"""Stratified full-range t for evaluation sample ``index``: a randomly shifted Weyl sequence.

    :math:`t_i = \epsilon + (1-\epsilon)\,\{u_0 + i\varphi\}` with :math:`\varphi = (\sqrt5-1)/2` and
    :math:`u_0` keyed by the seed. Each :math:`t_i` is marginally uniform (unbiased), and every
    prefix of the sequence covers [eps, 1] evenly (low discrepancy). It depends only on the global
    sample index, never on batch size, workers or ranks.
    """
    u0 = keyed_uniform((seed, STREAM_EVAL_T), device=index.device, dtype=torch.float64)
    u = torch.frac(u0 + index.to(torch.float64) * GOLDEN_FRACTION)
    return (eps + (1.0 - eps) * u).to(torch.float32)


def rng_states() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), Python and numpy, as plain types and tensors
    (loadable with ``torch.load(weights_only=True)``)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only where CUDA is available)."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def nelbo_has_data(values: dict[str, torch.Tensor]) -> bool:
    """True when the NELBO metric saw at least one maskable token (on any rank)."""
    return bool(values["tokens"] > 0)


def _metric_key(loader_name: str) -> str:
    """ModuleDict key of a loader's metrics (loader names such as ``train`` clash with nn.Module attributes)."""
    return "split_" + loader_name.replace(".", "_").replace("/", "_")


class MaskedDiffusionLM(LightningModule):
    """Masked diffusion language model.

    Args:
        backbone: factory called with ``vocab_size``; default: :class:`mdlm.models.Transformer` (``tiny``).
        vocab_size: size of the token vocabulary including [MASK]; linked from the data module by the CLI.
        mask_token_id: id of the absorbing [MASK] token; linked from the data module by the CLI.
        suppress_token_ids: further ids the model may never predict (e.g. a dedicated padding id);
            [MASK] is always suppressed.
        objective: ``masked_diffusion`` (t from the sampler callback), or ``output_supervision``
            (mask exactly the batch's ``query_mask`` positions — the parity label — and train CE on
            them only: the paper's label-only baseline).
        loss_weight: ``elbo`` (w(t) = 1/t) or ``none`` (w = 1); see :mod:`mdlm.objective`.
        normalization: ``batch_tokens`` | ``maskable_tokens`` | ``per_sequence`` | ``masked_tokens``.
        lr, weight_decay, betas, adam_eps: AdamW settings (peak learning rate).
        exclude_norms_biases_embeddings: no weight decay on norms, biases and embeddings.
        warmup_steps, lr_schedule, min_lr_ratio: linear warm-up, then cosine decay to
            ``min_lr_ratio * lr`` over ``trainer.estimated_stepping_batches``, or constant.
        eval_seed: seed of evaluation t and masks (keyed by global sample index).
        eval_eps: floor of the evaluation t range [eval_eps, 1].
        num_eval_t_bins: number of evaluation-t bins of the NELBO decomposition.
        generation_preset: named protocol of :data:`mdlm.generation.PRESETS` used by
            ``test``/``predict`` on generation batches (``prompt_input_ids``): ``cpu_tiny``,
            ``llada_gsm8k``, ``llada_math``.
        generation_overrides: fields of that preset to change, e.g. ``{gen_length: 128, steps: 128}``.
        init_device: build the backbone on this device; ``meta`` allocates nothing, for models too
            big for one device: FSDP2 (:class:`mdlm.parallel.FSDP2Strategy`) then materialises and
            initialises only each rank's shard (or loads ``init_weights`` into it), FSDP (v1)
            materialises each wrapped unit. Any other strategy refuses a meta model.

    Batches with ``prompt_input_ids`` (SFT test/predict loaders) are answered by the reverse
    process (:func:`mdlm.generation.generate`), decoded with the data module's tokenizer and
    scored with :func:`mdlm.answers.is_correct`: ``test/answer_acc`` (+ per group).
    """

    def __init__(
        self,
        backbone: BackboneFactory | None = None,
        vocab_size: int = 3,
        mask_token_id: int = 2,
        suppress_token_ids: Sequence[int] = (),
        objective: Objective = "masked_diffusion",
        loss_weight: LossWeight = "elbo",
        normalization: Normalization = "maskable_tokens",
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        exclude_norms_biases_embeddings: bool = True,
        warmup_steps: int = 0,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        min_lr_ratio: float = 0.1,
        eval_seed: int = 0,
        eval_eps: float = 1e-3,
        num_eval_t_bins: int = 10,
        generation_preset: str = "cpu_tiny",
        generation_overrides: dict[str, Any] | None = None,
        init_device: str | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id={mask_token_id} is outside the vocabulary [0, {vocab_size})")
        if objective not in ("masked_diffusion", "output_supervision"):
            raise ValueError(f"objective={objective!r} must be 'masked_diffusion' or 'output_supervision'")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule={lr_schedule!r} must be 'cosine' or 'constant'")
        if not 0.0 < eval_eps < 1.0:
            raise ValueError(f"eval_eps={eval_eps} must lie in (0, 1)")
        for tok in suppress_token_ids:
            if not 0 <= tok < vocab_size:
                raise ValueError(f"suppress_token_ids contains {tok}, outside the vocabulary [0, {vocab_size})")
        check_loss_options(loss_weight, normalization)
        self.generation_config = get_preset(generation_preset).replace(**(generation_overrides or {}))
        self.save_hyperparameters()
        with torch.device(init_device) if init_device else contextlib.nullcontext():
            if backbone is None:
                from mdlm.models.transformer import Transformer

                self.backbone = Transformer(vocab_size)
            else:
                self.backbone = backbone(vocab_size)
        backbone_mask = getattr(self.backbone, "mask_token_id", None)
        if backbone_mask is not None and backbone_mask != mask_token_id:
            raise ValueError(
                f"mask_token_id={mask_token_id} (the data's) differs from the [MASK] id {backbone_mask} that "
                f"{type(self.backbone).__name__} was trained with (its config / family): set data.init_args."
                f"mask_token_id={backbone_mask}, or train from scratch"
            )
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.suppressed = sorted({mask_token_id, *suppress_token_ids})
        self.objective = objective
        self.loss_weight = loss_weight
        self.normalization = normalization
        self.eval_metrics = nn.ModuleDict()
        self._eval_names: dict[str, list[str]] = {}
        self.global_batch_normalizer = GlobalBatchNormalizer()
        self.last_grad_norm: torch.Tensor | None = None

    # ------------------------------------------------------------------ model
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L, V] of the backbone (no suppression applied)."""
        return self.backbone(input_ids, attention_mask=attention_mask)

    @property
    def padding_hidden(self) -> bool:
        """Whether the backbone's attention honours ``attention_mask`` (False for LLaDA's published code).

        False: generation batches prompts of equal length only (:func:`mdlm.generation.generate`) and
        training/evaluation batches must not hide padding (:meth:`_batch_parts`)."""
        return bool(getattr(self.backbone, "padding_hidden", True))

    @property
    def sampler(self) -> MaskRatioSampler:
        samplers = self._samplers()
        if len(samplers) != 1:
            raise RuntimeError(self._sampler_error(samplers))
        return samplers[0]

    def _samplers(self) -> list[MaskRatioSampler]:
        return [cb for cb in self.trainer.callbacks if isinstance(cb, MaskRatioSampler)]

    @staticmethod
    def _sampler_error(samplers: list[MaskRatioSampler]) -> str:
        if not samplers:
            return (
                "fit with objective='masked_diffusion' needs exactly one mask-ratio sampler callback, found none: "
                "set `sampler:` in the config (e.g. class_path: mdlm.samplers.Uniform) or pass one in "
                "Trainer(callbacks=[...])"
            )
        return (
            f"fit needs exactly one mask-ratio sampler callback, found {len(samplers)}: "
            f"{', '.join(repr(s) for s in samplers)}; keep one (the CLI's `sampler:` key also adds one)"
        )

    def on_fit_start(self) -> None:
        if self.objective == "masked_diffusion":
            samplers = self._samplers()
            if len(samplers) != 1:
                raise RuntimeError(self._sampler_error(samplers))

    # ------------------------------------------------------------------ training
    def _batch_parts(self, batch: dict[str, torch.Tensor]):
        input_ids = batch["input_ids"]
        attention_mask = batch.get("attention_mask")
        if attention_mask is not None and not self.padding_hidden and not bool(attention_mask.all()):
            raise ValueError(
                f"{type(self.backbone).__name__} ignores attention_mask (padding_hidden=False), but this batch hides "
                f"{int((~attention_mask.bool()).sum())} padded positions: its loss would depend on the padding. Pad "
                "to a fixed length and attend to the padding (SFT: supervise_padding: true, LLaDA's convention) or "
                "pack sequences without padding"
            )
        return input_ids, batch.get("maskable"), attention_mask

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One micro-batch: :meth:`masked_diffusion_loss`, or :meth:`output_supervision_loss` (``objective``)."""
        if self.objective == "output_supervision":
            return self.output_supervision_loss(batch, batch_idx)
        return self.masked_diffusion_loss(batch, batch_idx)

    def masked_diffusion_loss(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        r"""This is the MD loss: one micro-batch's share of its optimizer step's loss, to back-propagate.

        Over the step's global batch (accumulation micro-steps a, data-parallel ranks r):

        .. math:: \mathcal{L} = \frac{\sum_{a,r} N_{a,r}}{\max(1, \sum_{a,r} Z_{a,r})}, \qquad
                  N = \sum_b c_b\, w(t_b) \sum_i m_{bi}\, \ell_{bi}

        with :math:`\ell_{bi} = -\log p_\theta(x_{0,bi} \mid x_t)`, :math:`m_{bi}` the masked positions,
        :math:`w` = ``loss_weight``, :math:`c_b` the sampler's sequence weights (1 but for importance
        sampling) and Z = ``normalization`` (:mod:`mdlm.objective`). W ranks equal one process on the
        same global batch. Logged: ``train/loss`` (the global micro-batch loss) and ``train/masked_fraction``.
        """
        input_ids, maskable, attention_mask = self._batch_parts(batch)
        B, L = input_ids.shape
        # 1. where the micro-batch sits in the step's global batch: rows first .. first + B - 1 of G = A W B
        rank, world, group = self._data_parallel()
        accumulate = max(1, int(self.trainer.accumulate_grad_batches))
        micro = batch_idx % accumulate
        first, global_size = global_batch_rows(B, micro, rank, world, accumulate)
        # 2. the sampler's draw, keyed by (seed, optimizer step, global row): t_b, mask uniforms u_bi, weights c_b
        step = self.trainer.global_step
        progress = training_progress(step, self.trainer.estimated_stepping_batches)
        draw = self.sampler.draw_batch((B, L), progress, step, first, global_size, device=input_ids.device)
        # 3. the forward process: x_t masks maskable token i of row b iff u_bi < t_b
        noisy, masked = mask_tokens(input_ids, draw.t, self.mask_token_id, draw.uniforms, maskable)
        # 4. score: l_bi = -log p(x_0,bi | x_t), [MASK] and the suppressed ids never predicted
        nll = denoiser_nll(self, noisy, input_ids, self.suppressed, attention_mask)
        # 5. this micro-batch's numerator N and normaliser Z
        numerator, normaliser = md_loss_parts(
            nll, masked, draw.t, maskable, self.loss_weight, self.normalization, sequence_weights=draw.weights
        )
        # 6. divide by the global batch's Z (all-reduced over ranks, summed over accumulation steps)
        return self._global_loss(numerator, normaliser, masked, micro, world, group)

    def output_supervision_loss(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The label-only baseline: mask exactly the ``query_mask`` positions; the mean cross-entropy over
        them, normalised over the global batch as :meth:`masked_diffusion_loss`."""
        input_ids, _, attention_mask = self._batch_parts(batch)
        _, world, group = self._data_parallel()
        micro = batch_idx % max(1, int(self.trainer.accumulate_grad_batches))
        query = batch["query_mask"]
        noisy = torch.where(query, torch.full_like(input_ids, self.mask_token_id), input_ids)
        nll = denoiser_nll(self, noisy, input_ids, self.suppressed, attention_mask)
        t = torch.ones(input_ids.shape[0], device=input_ids.device)
        numerator, normaliser = md_loss_parts(nll, query, t, query, "none", "masked_tokens")
        return self._global_loss(numerator, normaliser, query, micro, world, group)

    def _global_loss(self, numerator, normaliser, masked, micro: int, world: int, group: Any) -> torch.Tensor:
        """The loss to back-propagate (:class:`~mdlm.normalizer.GlobalBatchNormalizer`); logs the global loss."""
        loss, global_loss = self.global_batch_normalizer(numerator, normaliser, micro, world, group)
        self.log("train/loss", global_loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/masked_fraction", masked.float().mean(), on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Rescale the accumulated gradients to the global batch's normaliser (a no-op without accumulation)."""
        accumulate = max(1, int(self.trainer.accumulate_grad_batches))
        self.global_batch_normalizer.rescale_gradients(self.parameters(), accumulate)

    # ------------------------------------------------------------------ distributed
    def _data_parallel(self) -> tuple[int, int, Any]:
        """(data-parallel rank, data-parallel world size W, process group of the all-reduce or None)."""
        trainer = self._trainer
        kwargs = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
        world, rank = int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))
        mesh = self._device_mesh
        group = None
        if mesh is not None and "data_parallel" in (mesh.mesh_dim_names or ()):
            group = mesh["data_parallel"].get_group()
        return rank, world, group

    def configure_model(self) -> None:
        """FSDP2: shard the backbone with ``fully_shard`` when the strategy provides a device mesh.

        Only under ``ModelParallelStrategy`` (e.g. :class:`mdlm.parallel.FSDP2Strategy`, whose ``plan``
        sets activation checkpointing, resharding, offload, mixed precision and pretrained weights);
        a no-op otherwise, and idempotent (Lightning may call it more than once).
        """
        mesh = self._device_mesh
        if mesh is None:
            self._check_materialised()
            return
        from mdlm.parallel import FSDP2Plan, parallelize

        strategy = self._trainer.strategy if self._trainer is not None else None
        plan = getattr(strategy, "plan", None) or FSDP2Plan()
        parallelize(self.backbone, mesh, plan, device=strategy.root_device if strategy is not None else None)

    def _check_materialised(self) -> None:
        """A meta-device backbone (``init_device="meta"``) needs a strategy that materialises it."""
        from lightning.pytorch.strategies import FSDPStrategy

        from mdlm.parallel import has_meta_tensors

        strategy = self._trainer.strategy if self._trainer is not None else None
        if has_meta_tensors(self.backbone) and not isinstance(strategy, FSDPStrategy):
            raise RuntimeError(
                f"the backbone is on the meta device (init_device={self.hparams.get('init_device')!r}) but the "
                f"strategy {type(strategy).__name__} does not materialise it: use FSDP2 "
                "(--config configs/trainer/fsdp2_bf16.yaml) or FSDP, or set --model.init_args.init_device=null"
            )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        r"""Norm clipping that is correct under sharding; value clipping as Lightning does it.

        FSDP (v1): the root's ``FullyShardedDataParallel.clip_grad_norm_`` (Lightning refuses
        ``norm`` there); FSDP2 / DTensor parameters: :func:`mdlm.parallel.clip_grad_norm_` (global norm
        over all shards); otherwise Lightning's default. The norm before clipping is kept in
        :attr:`last_grad_norm` and logged as ``train/grad_norm``.
        """
        if not gradient_clip_val or (gradient_clip_algorithm or "norm") != "norm":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.tensor import DTensor

        from mdlm.parallel import clip_grad_norm_

        root = self.trainer.strategy.model if self._trainer is not None else None
        if isinstance(root, FullyShardedDataParallel):
            norm = root.clip_grad_norm_(gradient_clip_val)
        elif any(isinstance(p, DTensor) for p in self.parameters()):
            norm = clip_grad_norm_(self.parameters(), gradient_clip_val)
        else:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        self.last_grad_norm = norm.detach()
        self.log("train/grad_norm", self.last_grad_norm.float(), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store every rank's global RNG states (torch, CUDA, numpy, python): dropout resumes exactly;
        and the data module's tokenizer under ``"mdlm_tokenizer"``.

        t and masks need no state (keyed by step and row); the generators of dropout and of any
        user code do. Gathered over ranks (the hook runs on every rank) and restored per rank.
        The tokenizer (:meth:`mdlm.data.contract.MDLMDataModule.tokenizer_state`: its files and their
        sha256) lets :func:`mdlm.data.tokenizer.tokenizer_from_checkpoint` restore it without the
        original files; parity and plain LightningDataModules store none.
        """
        import torch.distributed as dist

        states = [rng_states()]

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states[0])
            states = gathered
        checkpoint["mdlm_rng_states"] = states
        dm = self._datamodule()
        tokenizer_state = dm.tokenizer_state() if dm is not None else None
        if tokenizer_state is not None:
            checkpoint[TOKENIZER_CHECKPOINT_KEY] = tokenizer_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore this rank's RNG states saved by :meth:`on_save_checkpoint` (if the run had as many ranks)."""
        states = checkpoint.get("mdlm_rng_states")
        rank = self.global_rank if self._trainer is not None else 0
        if states and rank < len(states):
            set_rng_states(states[rank])

    # ------------------------------------------------------------------ evaluation
    def _datamodule(self) -> MDLMDataModule | None:
        """The trainer's data module when it follows mdlm's data contract (:mod:`mdlm.data.contract`), else None."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return dm if isinstance(dm, MDLMDataModule) else None

    def setup(self, stage: str) -> None:
        dm = self._datamodule()  # a plain LightningDataModule: loaders "val"/"test", no answer groups
        names = {
            "validate": list((dm.val_dataloader_names if dm is not None else None) or ["val"]),
            "test": list((dm.test_dataloader_names if dm is not None else None) or ["test"]),
        }
        self._eval_names = names
        if stage == "test" and "answer_acc" not in self.eval_metrics:
            groups = sorted(dm.answer_groups) if dm is not None else []
            self.eval_metrics["answer_acc"] = AnswerAccuracy(groups=groups or None)
        for name in names["validate"] + names["test"]:
            if _metric_key(name) not in self.eval_metrics:
                self.eval_metrics[_metric_key(name)] = nn.ModuleDict(
                    {"nelbo": NELBO(self.hparams.num_eval_t_bins), "label_acc": TokenAccuracy()}
                )

    def _loader_name(self, stage: str, dataloader_idx: int) -> str:
        names = self._eval_names.get(stage) or ["val" if stage == "validate" else "test"]
        if dataloader_idx >= len(names):
            raise IndexError(
                f"{stage} dataloader {dataloader_idx} has no name: the data module names {names} "
                "(subclass mdlm.data.contract.MDLMDataModule and set `val_dataloader_names`/`test_dataloader_names`)"
            )
        return names[dataloader_idx]

    def _eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int, stage: str) -> None:
        input_ids, maskable, attention_mask = self._batch_parts(batch)
        B, L = input_ids.shape
        device = input_ids.device
        index = batch.get("index")
        if index is None:  # sequential single-process fallback: position in the evaluation stream
            index = batch_idx * B + torch.arange(B, device=device)
        seed, eps = self.hparams.eval_seed, self.hparams.eval_eps
        t = evaluation_t(index, seed, eps)
        u = keyed_uniform(
            (seed, STREAM_EVAL_MASK, index.unsqueeze(1), torch.arange(L, device=device).unsqueeze(0)), device=device
        )
        noisy, masked = mask_tokens(input_ids, t, self.mask_token_id, u, maskable)
        nll = denoiser_nll(self, noisy, input_ids, self.suppressed, attention_mask)
        maskable_count = maskable.sum(-1) if maskable is not None else torch.full((B,), L, device=device)
        metrics = self.eval_metrics[_metric_key(self._loader_name(stage, dataloader_idx))]
        metrics["nelbo"].update(nelbo_sums(nll, masked, t), maskable_count, t)
        query = batch.get("query_mask")
        if query is not None:
            probe = torch.where(query, torch.full_like(input_ids, self.mask_token_id), input_ids)
            logits = suppress_tokens(self(probe, attention_mask).float(), self.suppressed)
            metrics["label_acc"].update(logits.argmax(-1), input_ids, query)

    def _eval_epoch_end(self, stage: str) -> None:
        # compute() on every rank for every loader of the stage (it synchronises across ranks, so
        # no rank may skip it, even one that received no batch); log what has data after the sync
        for name in self._eval_names.get(stage, []):
            metrics = self.eval_metrics[_metric_key(name)]
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                nelbo = metrics["nelbo"].compute()
                accuracy = metrics["label_acc"].compute()
            metrics["nelbo"].reset()
            metrics["label_acc"].reset()
            values = {}
            if nelbo_has_data(nelbo):
                values = {f"{name}/{k}": v.float() for k, v in nelbo.items() if k != "tokens"}
            if torch.isfinite(accuracy):
                values[f"{name}/label_acc"] = accuracy.float()
            prog = {f"{name}/nelbo", f"{name}/label_acc"}
            self.log_dict({k: v for k, v in values.items() if k in prog}, prog_bar=True, add_dataloader_idx=False)
            self.log_dict({k: v for k, v in values.items() if k not in prog}, add_dataloader_idx=False)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, batch_idx, dataloader_idx, "validate")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("validate")

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0) -> None:
        if "prompt_input_ids" in batch:
            records = self._answer(batch)
            scored = [r for r in records if r["correct"] is not None]
            if scored:
                metric = self.eval_metrics["answer_acc"]
                groups = [r["group"] for r in scored] if metric.groups else None
                metric.update([r["correct"] for r in scored], groups)
            return
        self._eval_step(batch, batch_idx, dataloader_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        if "answer_acc" in self.eval_metrics and self.eval_metrics["answer_acc"].update_count:
            metric = self.eval_metrics["answer_acc"]
            self.log_dict({k: float(v) for k, v in metric.flat("test/answer_").items()}, add_dataloader_idx=False)
            metric.reset()

    def _answer(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Generate an answer for every prompt of a generation batch, decode, extract and check it."""
        dm = self._datamodule()
        if dm is None or dm.tokenizer is None:
            found = type(getattr(self._trainer, "datamodule", None)).__name__
            raise RuntimeError(
                f"generation batches need an mdlm.data.contract.MDLMDataModule with a `tokenizer` to decode "
                f"answers (found {found})"
            )
        tokenizer, eos, pad = dm.tokenizer, dm.eos_token_id, dm.pad_token_id
        kwargs = dict(
            mask_token_id=self.mask_token_id,
            eos_token_id=eos,
            pad_token_id=pad if pad is not None else eos,
            suppress_token_ids=[t for t in self.suppressed if t != self.mask_token_id],
            **self.generation_config.generate_kwargs(),
        )
        ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        sharded = self._sharded_ranks()
        if sharded:  # sharded forwards are collective: every rank makes the same number of model calls
            kwargs["lockstep"] = True
        rows = self._lockstep_rows(ids.shape[0]) if sharded and not self.padding_hidden else None
        if rows is None:
            sequences = generate(self, ids, attention_mask=mask, **kwargs).sequences
        else:
            # one prompt per call (each gives the same number of forward passes), the same number of calls on
            # every rank: sharded forwards are collective, and grouping by length would differ between ranks
            sequences = []
            for row in range(rows):
                real = min(row, ids.shape[0] - 1)
                out = generate(self, ids[real : real + 1][:, mask[real].bool()], **kwargs).sequences[0]
                if row < ids.shape[0]:
                    sequences.append(out)
        records = []
        for i, sequence in enumerate(sequences):
            text = tokenizer.decode(sequence, skip_special_tokens=True)
            dataset = batch["dataset"][i]
            reference = batch["reference"][i]
            scorable = dataset in ("gsm8k", "math") and reference is not None
            records.append(
                {
                    "index": int(batch["index"][i]),
                    "dataset": dataset,
                    "group": batch["group"][i],
                    "prompt": batch["prompt_text"][i],
                    "generation": text,
                    "extracted": extract_answer(text, dataset) if scorable else None,
                    "reference": reference,
                    "correct": bool(is_correct(text, reference, dataset)) if scorable else None,
                }
            )
        return records

    def _sharded_ranks(self) -> bool:
        """True under a sharded strategy (FSDP/FSDP2) with more than one rank: forward passes are collective."""
        import torch.distributed as dist

        from mdlm.parallel import is_sharded

        strategy = self._trainer.strategy if self._trainer is not None else None
        sharded = any(is_sharded(m) for m in self.backbone.modules()) or type(strategy).__name__.startswith("FSDP")
        return bool(sharded and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)

    def _lockstep_rows(self, batch_rows: int) -> int:
        """The largest generation batch over the ranks: a padding-blind backbone then generates that many
        single prompts on every rank (repeating its last one)."""
        import torch.distributed as dist

        rows = torch.tensor([batch_rows], device=self.device)
        dist.all_reduce(rows, op=dist.ReduceOp.MAX)
        return int(rows.item())

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Generation batches: a list of answer records (prompt, generation, extracted answer,
        reference, correct). Other batches: one-step denoising of every [MASK] of ``input_ids``."""
        if "prompt_input_ids" in batch:
            return self._answer(batch)
        input_ids, _, attention_mask = self._batch_parts(batch)
        logits = suppress_tokens(self(input_ids, attention_mask).float(), self.suppressed)
        filled = torch.where(input_ids == self.mask_token_id, logits.argmax(-1), input_ids)
        return {"input_ids": input_ids, "prediction": filled}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        groups = parameter_groups(self.backbone, hp.weight_decay, hp.exclude_norms_biases_embeddings)
        for dtype in {p.dtype for group in groups for p in group["params"] if p.is_floating_point()}:
            if torch.tensor(hp.adam_eps, dtype=dtype) == 0:  # AdamW would divide 0 by 0: NaN weights at step 1
                raise ValueError(
                    f"adam_eps={hp.adam_eps} rounds to 0 in {dtype} (the weights' dtype, e.g. trainer.precision="
                    f"16-true): set model.init_args.adam_eps >= {float(torch.finfo(dtype).smallest_normal):.1e}, "
                    "or keep fp32 weights (bf16-mixed, 32-true)"
                )
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.adam_eps)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        total = int(total) if math.isfinite(total) else 0
        if hp.lr_schedule == "cosine" and total <= 0:
            raise ValueError("lr_schedule='cosine' needs a finite run length: set trainer.max_steps or max_epochs")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(step, hp.warmup_steps, total, hp.lr_schedule, hp.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
