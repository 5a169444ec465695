"""A tiny market where learning takes seconds: one segment that prefers category a, two slots, two delays."""

from __future__ import annotations

from adrl.scenario import Scenario


def tiny_scenario() -> Scenario:
    return Scenario.model_validate(
        {
            "name": "tiny",
            "horizon": 12,
            "delays": [0, 2],
            "categories": ["a", "b"],
            "segments": [{"name": "fans", "share": 1.0, "interest": {"a": 1.2, "b": -0.5}, "activity": [0.6] * 24}],
            "creatives": [
                {"name": "a0", "category": "a", "quality": 0.3, "conversion_value": 3.0},
                {"name": "b0", "category": "b", "quality": 0.3, "conversion_value": 3.0},
            ],
            "slots": [
                {"name": "feed", "attention": 1.0, "annoyance": 1.0, "cost": 0.01},
                {"name": "popup", "attention": 1.5, "annoyance": 3.0, "cost": 0.03},
            ],
        }
    )
