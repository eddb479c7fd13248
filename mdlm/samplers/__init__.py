"""Mask-ratio samplers: Lightning callbacks that choose t for each training sequence."""

from mdlm.samplers.adaptive import AdaptiveBins
from mdlm.samplers.base import MaskDraw, MaskRatioSampler
from mdlm.samplers.curriculum import Curriculum
from mdlm.samplers.parity import (
    ParitySignalOptimal,
    signal_optimal_point,
    signal_optimal_window_max,
    signal_probability,
)
from mdlm.samplers.schedules import (
    CosineCurriculum,
    LinearCurriculum,
    Mixture,
    StepCurriculum,
    WarmStart,
    WindowCurriculum,
)
from mdlm.samplers.windows import Bins, Fixed, Uniform, Window

__all__ = [
    "MaskRatioSampler",
    "MaskDraw",
    "Uniform",
    "Window",
    "Fixed",
    "Bins",
    "Curriculum",
    "LinearCurriculum",
    "WindowCurriculum",
    "CosineCurriculum",
    "StepCurriculum",
    "WarmStart",
    "Mixture",
    "AdaptiveBins",
    "ParitySignalOptimal",
    "signal_probability",
    "signal_optimal_point",
    "signal_optimal_window_max",
]
