"""Policy serving: ``PolicyService`` in process, ``create_app`` for HTTP, and the durable decision/feedback log."""

from typing import TYPE_CHECKING

from adrl.serving.decision_log import DecisionLog, FeedbackClosed, UnknownDecision
from adrl.serving.service import FeedbackRequest, PolicyService, ServeConfig

if TYPE_CHECKING:
    from adrl.serving.app import create_app

__all__ = [
    "DecisionLog",
    "FeedbackClosed",
    "FeedbackRequest",
    "PolicyService",
    "ServeConfig",
    "UnknownDecision",
    "create_app",
]


def __getattr__(name: str) -> object:
    if name == "create_app":  # imports FastAPI only when the HTTP app is wanted
        from adrl.serving.app import create_app

        return create_app
    raise AttributeError(f"module 'adrl.serving' has no attribute {name!r}")
