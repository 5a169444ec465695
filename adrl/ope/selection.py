"""Offline policy selection: rank candidates evaluated on the same logs and decide which, if any, to ship.

The ship rule is pessimistic: a candidate qualifies only if the lower end of its interval beats the logging policy's
own value (what the logs earned); among those the one with the highest lower bound is recommended. When none
qualifies the recommendation is to keep the logging policy (and log more, or explore where the candidates act).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adrl.ope.estimate import Estimate


@dataclass(frozen=True)
class Selection:
    """Candidates ranked by estimate, the ones whose lower bound beats the logged value, and the pick (or None)."""

    estimator: str
    logged_value: float
    ranking: tuple[tuple[str, Estimate], ...]
    qualifying: tuple[str, ...]
    recommended: str | None

    @property
    def pick(self) -> str:
        """What a user without ground truth would ship: the ship rule's pick, else the top estimate (``message``
        then says that nothing beats the logging policy)."""
        return self.recommended or self.ranking[0][0]

    @property
    def message(self) -> str:
        if self.recommended is None:
            return (
                f"no candidate's lower bound ({self.estimator}) beats the logging policy's value "
                f"{self.logged_value:.4f}: keep the logging policy"
            )
        lower = dict(self.ranking)[self.recommended].lower
        return (
            f"ship {self.recommended}: its lower bound {lower:.4f} ({self.estimator}) beats the logging policy's "
            f"value {self.logged_value:.4f}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "logged_value": self.logged_value,
            "ranking": [{"policy": name, **e.as_dict()} for name, e in self.ranking],
            "qualifying": list(self.qualifying),
            "recommended": self.recommended,
            "message": self.message,
        }


def select(estimates: Mapping[str, Estimate], logged_value: float, *, estimator: str) -> Selection:
    """Rank ``estimates`` (candidate name -> estimate of one estimator) and apply the ship rule against
    ``logged_value``."""
    ranking = tuple(sorted(estimates.items(), key=lambda kv: -kv[1].value))
    qualifying = tuple(name for name, e in ranking if e.lower > logged_value)
    best = max(qualifying, key=lambda name: estimates[name].lower) if qualifying else None
    return Selection(estimator, float(logged_value), ranking, qualifying, best)


__all__ = ["Selection", "select"]
