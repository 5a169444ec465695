"""Behavior-prediction model: learns click, conversion (ESMM) and leave probabilities from logged impressions.

>>> from adrl.behavior import fit_adrl, LearnedResponse  # doctest: +SKIP
>>> report = fit_adrl("runs/logs.parquet")  # doctest: +SKIP
>>> report.model.save("runs/behavior")  # doctest: +SKIP
>>> response = LearnedResponse.load("runs/behavior")  # a ResponseModel for World.step and the environments
"""

from adrl.behavior.inputs import HEADS, AdrlEncoder, InputSpec
from adrl.behavior.metrics import HeadMetrics, head_metrics
from adrl.behavior.model import BehaviorModel
from adrl.behavior.net import BehaviorNet
from adrl.behavior.profiling import UserProfiler
from adrl.behavior.response import BehaviorValueModel, LearnedResponse
from adrl.behavior.training import FitConfig, FitReport, ObdEncoder, fit_adrl, fit_obd, predict_obd

__all__ = [
    "HEADS",
    "AdrlEncoder",
    "BehaviorModel",
    "BehaviorNet",
    "BehaviorValueModel",
    "FitConfig",
    "FitReport",
    "HeadMetrics",
    "InputSpec",
    "LearnedResponse",
    "ObdEncoder",
    "UserProfiler",
    "fit_adrl",
    "fit_obd",
    "head_metrics",
    "predict_obd",
]
