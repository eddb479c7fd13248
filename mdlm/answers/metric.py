"""Answer checking by dataset (``extract_answer``, ``is_correct``) and the ``AnswerAccuracy`` metric."""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import torch
from torchmetrics import Metric

from mdlm.answers.equivalence import math_is_equivalent
from mdlm.answers.gsm8k import gsm8k_is_correct, gsm8k_predicted_answer
from mdlm.answers.math_latex import last_boxed, math_reference_answer

__all__ = ["DATASETS", "AnswerAccuracy", "Dataset", "extract_answer", "is_correct"]

Dataset = Literal["gsm8k", "math"]
DATASETS: tuple[str, ...] = ("gsm8k", "math")

_MINERVA_RE = re.compile(
    r"final answer is\s*:?\s*\$?(?P<ans>.+?)\$?\s*\.?\s*I hope it is correct", re.IGNORECASE | re.DOTALL
)


# --------------------------------------------------------------------------- #
# Dispatchers
# --------------------------------------------------------------------------- #


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def extract_answer(generation: str, dataset: Dataset) -> str | None:
    """Answer text of a generation: GSM8K number (as written) or MATH last box.

    For MATH, if there is no box, a Minerva-style ``Final Answer: The final answer
    is X. I hope it is correct.`` is used; otherwise ``None``.
    """
    _check_dataset(dataset)
    if dataset == "gsm8k":
        return gsm8k_predicted_answer(generation)
    boxed = last_boxed(generation)
    if boxed is not None:
        return boxed.strip()
    matches = list(_MINERVA_RE.finditer(str(generation)))
    return matches[-1].group("ans").strip() if matches else None


def is_correct(
    generation: str,
    reference: str | Mapping[str, Any],
    dataset: Dataset,
    timeout_s: float | None = 5.0,
) -> bool:
    """Whether a generation answers correctly.

    ``reference``: for GSM8K the ``answer`` field (``... #### 72``), a bare number,
    or the record; for MATH the reference answer string or the record (see
    :func:`math_reference_answer`).
    """
    _check_dataset(dataset)
    if dataset == "gsm8k":
        if isinstance(reference, Mapping):
            reference = reference["answer"]
        return gsm8k_is_correct(generation, reference)
    if isinstance(reference, Mapping):
        reference = math_reference_answer(reference)
    return math_is_equivalent(extract_answer(generation, "math"), reference, timeout_s=timeout_s)


# --------------------------------------------------------------------------- #
# Metric
# --------------------------------------------------------------------------- #


class AnswerAccuracy(Metric):
    """Accuracy of checked answers, overall and per group (e.g. MATH level or subject).

    Groups are declared once, at construction: ``AnswerAccuracy(groups=["Level 1", ...])``.
    Every state is a fixed-size count tensor reduced by ``sum``, so the metric is
    exact under DDP. ``update(correct, groups=None)`` takes a list of booleans or a
    bool tensor, plus (only when groups were declared) one label per item; labels
    must be among the declared ones (compared with ``==``, so ``1`` and ``"1"``
    differ). Items updated without labels count toward the overall accuracy only.

    ``compute()`` returns ``{"accuracy": tensor, "count": tensor, "per_group":
    {str(group): tensor}}``; a group with no items has accuracy ``nan``.
    :meth:`flat` gives a ``{"accuracy": ..., "accuracy/<group>": ...}`` dict for
    ``LightningModule.log_dict``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    total: torch.Tensor
    group_correct: torch.Tensor
    group_total: torch.Tensor

    def __init__(self, groups: Sequence[Hashable] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        groups = list(groups) if groups is not None else []
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups must be unique; got {groups}")
        self.groups: list[Hashable] = groups
        self._index = {g: i for i, g in enumerate(groups)}
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        n = len(groups)
        self.add_state("group_correct", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("group_total", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Sequence[bool] | torch.Tensor, groups: Sequence[Hashable] | None = None) -> None:
        c = torch.as_tensor(correct, device=self.correct.device).reshape(-1)
        if c.numel() and c.dtype != torch.bool:
            if not bool(((c == 0) | (c == 1)).all()):
                raise ValueError(f"correct must hold booleans (or 0/1); got values {c.unique().tolist()}")
        c = c.to(torch.long)
        self.correct += c.sum()
        self.total += c.numel()
        if groups is None:
            return
        if not self.groups:
            raise ValueError("group labels were given but AnswerAccuracy was built without groups=[...]")
        labels = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
        if len(labels) != c.numel():
            raise ValueError(f"got {c.numel()} results but {len(labels)} group labels")
        try:
            idx = [self._index[g] for g in labels]
        except KeyError as e:
            raise ValueError(f"unknown group label {e.args[0]!r}; declared groups are {self.groups}") from None
        idx_t = torch.tensor(idx, dtype=torch.long, device=c.device)
        self.group_correct.index_add_(0, idx_t, c)
        self.group_total.index_add_(0, idx_t, torch.ones_like(c))

    def compute(self) -> dict[str, Any]:
        def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
            return num.double() / den.double() if int(den) > 0 else torch.tensor(math.nan, dtype=torch.float64)

        return {
            "accuracy": ratio(self.correct, self.total),
            "count": self.total.clone(),
            "per_group": {str(g): ratio(self.group_correct[i], self.group_total[i]) for i, g in enumerate(self.groups)},
        }

    def flat(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``compute()`` as a flat dict: ``{prefix+"accuracy": ..., prefix+"accuracy/<group>": ...}``."""
        out = self.compute()
        flat = {f"{prefix}accuracy": out["accuracy"]}
        flat.update({f"{prefix}accuracy/{g}": v for g, v in out["per_group"].items()})
        return flat
