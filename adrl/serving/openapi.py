"""The request schemas of ``/openapi.json``, as exact as JSON Schema can say what the server accepts.

pydantic's schemas of the request types know the types and bounds; the served market adds the rest: segment,
category, slot and creative names (enums and closed objects), the observation vector (its length and each
feature's bounds, integral where categorical), the two forms of a decision (``obs``, or ``user`` + ``context``),
the list form's size, and feedback's ``shown`` rule. A body valid against these schemas is accepted unless it breaks
a rule JSON Schema cannot state (windowed counts that must not shrink, conversions at most clicks); those rules are
written in the fields' descriptions, and a body breaking them gets a 422 naming the field.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from adrl.features import FeatureLayout
from adrl.requests import DecisionRequest

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"

# rules between fields that JSON Schema cannot state: the server checks them and names the field in a 422
CROSS_FIELD = {
    "impressions_6h": "must be >= impressions_1h (a longer window holds at least as many impressions)",
    "impressions_24h": "must be >= impressions_6h (a longer window holds at least as many impressions)",
    "conversions_today": "must be <= clicks_today (a conversion follows a click)",
}


def request_schemas(layout: FeatureLayout, feedback: TypeAdapter[Any]) -> dict[str, Schema]:
    """Component schemas of the decision and feedback requests for the market of ``layout``."""
    _, defs = TypeAdapter.json_schemas(
        [("decision", "validation", TypeAdapter(DecisionRequest)), ("feedback", "validation", feedback)],
        ref_template=REF,
    )
    schemas: dict[str, Schema] = copy.deepcopy(defs.get("$defs", {}))
    _user(schemas["UserFeatures"], layout)
    _history(schemas["History"], layout)
    _decision(schemas["DecisionRequest"], layout)
    _feedback(schemas["FeedbackRequest"])
    return schemas


def decision_body(max_batch: int) -> Schema:
    """``POST /v1/decisions``: one request, or a list of at most ``max_batch``."""
    ref = {"$ref": REF.format(model="DecisionRequest")}
    return {"oneOf": [ref, {"type": "array", "items": ref, "maxItems": max_batch}]}


def _closed(names: tuple[str, ...], value: Schema) -> Schema:
    """An object whose keys are some of ``names``, each with a ``value`` schema."""
    return {"type": "object", "properties": {n: dict(value) for n in names}, "additionalProperties": False}


def _user(schema: Schema, layout: FeatureLayout) -> None:
    props = schema["properties"]
    props["segment"]["anyOf"] = [
        {"type": "string", "enum": list(layout.segments)},
        {"type": "integer", "minimum": 0, "maximum": len(layout.segments) - 1},
    ]
    signals = props["signals"]
    signals.update(_closed(layout.categories, signals.pop("additionalProperties")))


def _history(schema: Schema, layout: FeatureLayout) -> None:
    props = schema["properties"]
    for field, names in (
        ("slot_counts", layout.slots),
        ("creative_counts", layout.creatives),
        ("slot_exposure", layout.slots),
        ("slot_repeat_exposure", layout.slots),
    ):
        props[field].update(_closed(names, props[field].pop("additionalProperties")))
    for field, rule in CROSS_FIELD.items():
        props[field]["description"] = rule


def _decision(schema: Schema, layout: FeatureLayout) -> None:
    props = schema["properties"]
    for option in props["episode_id"]["anyOf"]:
        if option.get("type") == "string":
            option.update(minLength=1, maxLength=256)
    low, high = layout.obs_low, layout.obs_high  # what the server compares with (float32)
    features = []
    for j, f in enumerate(layout.obs):
        item: Schema = {"type": "number", "minimum": float(np.float64(low[j])), "maximum": float(np.float64(high[j]))}
        if f.kind == "categorical":
            item["multipleOf"] = 1
        item["description"] = f.name
        features.append(item)
    props["obs"]["anyOf"] = [
        {"type": "array", "prefixItems": features, "items": False, "minItems": layout.obs_dim,
         "maxItems": layout.obs_dim},
        {"type": "null"},
    ]  # fmt: skip
    props["obs"]["description"] = (
        f"raw observation: {layout.obs_dim} values in the order of GET /v1/policy's obs_names "
        f"({', '.join(layout.obs_names[:3])}, ...)"
    )
    absent = {"type": "null"}
    schema["anyOf"] = [
        {
            "title": "raw observation",
            "required": ["obs"],
            "properties": {"obs": {"type": "array"}, "user": absent, "context": absent, "history": absent},
        },
        {
            "title": "user and context",
            "required": ["user", "context"],
            "properties": {"user": {"type": "object"}, "context": {"type": "object"}, "obs": absent},
        },
    ]
    schema["description"] += " Give either ``obs`` or ``user`` and ``context`` (with optional ``history``)."


def _feedback(schema: Schema) -> None:
    # shown=false with a click or a conversion is refused: an ad that was not shown cannot be clicked
    schema["anyOf"] = [
        {"title": "shown", "properties": {"shown": {"const": True}}},
        {
            "title": "not shown",
            "required": ["shown"],
            "properties": {"shown": {"const": False}, "click": {"const": False}, "conversion": {"const": False}},
        },
    ]
    schema["description"] += (
        " Feedback merged over several requests must make sense too: a decision reported not shown cannot later be "
        "reported clicked (422)."
    )
