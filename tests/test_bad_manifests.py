"""Damaged policy manifests of every kind: one of the project's errors, fast, before any large allocation; the
serving loader and the evaluation loader accept and refuse the same artifacts."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adrl.agents.factory import load_preset
from adrl.agents.registry import AGENTS, MANIFEST, build_agent, load_policy_artifact
from adrl.errors import AdrlError, ArtifactError
from adrl.policy import load_policy
from adrl.scenario import Scenario
from adrl.training import train_run

SMALL = {"hidden": 8, "n_steps": 8, "batch_size": 32, "buffer_size": 256, "learning_starts": 0, "log_every": 32}
SB3 = ("ppo", "a2c", "dqn")  # saved only once they have a model: a few steps of training


def _saved(kind: str, root: Path) -> Path:
    preset = load_preset(kind)
    params = {**preset.params, **{k: v for k, v in SMALL.items() if k in preset.params}}
    if kind in SB3:
        train_run(agent_name=kind, env_id="adrl/AdPlacement-v0", out=root / f"{kind}-run", steps=64, n_envs=4,
                  overrides=params, checkpoint_every=64, progress=False)  # fmt: skip
        return root / f"{kind}-run" / "policy"
    agent = build_agent(kind, Scenario(), params, seed=0, score=lambda policy: 0.0)
    agent.save(root / kind)
    return root / kind


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("manifests")
    return {kind: _saved(kind, root) for kind in AGENTS}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (dict keys and list indices), the document itself first."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, where: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not where:
        return value
    parent = doc
    for key in where[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    return doc


scalars = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, -1, 1, 2**31, 2**40, 2**63, -(2**63) - 1, 10**30, 1.5, -0.0, 1e308, 3])
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "x", "greedy", "nan", "1e9", "[]"])
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
deep = st.integers(200, 100_000).map(lambda n: json.loads("[" * min(n, 900) + "]" * min(n, 900)))


@pytest.mark.parametrize("kind", list(AGENTS))
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_a_damaged_manifest_is_one_project_error_and_fast(
    artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, kind: str, data: st.DataObject
) -> None:
    source = artifacts[kind]
    manifest = json.loads((source / MANIFEST).read_text())
    places = _paths(manifest)
    top = [p for p in places if len(p) == 1 or (len(p) == 2 and p[0] in ("config", "rng_state"))]
    where = data.draw(st.sampled_from(top) | st.sampled_from(places[1:]), label="where")  # mostly the own fields
    value = data.draw(json_values | deep, label="value")
    delete = data.draw(st.booleans(), label="delete")
    damaged = _replace(manifest, where, value, delete)
    path = tmp_path_factory.mktemp("damaged") / kind
    shutil.copytree(source, path)
    (path / MANIFEST).write_text(json.dumps(damaged))
    outcomes = []
    for load in (load_policy, load_policy_artifact):
        start = time.perf_counter()
        try:
            load(path)
            outcomes.append("loaded")
        except AdrlError as e:
            outcomes.append(type(e).__name__)
            assert str(e)
        assert time.perf_counter() - start < 2.0, (where, value)
    assert outcomes[0] == outcomes[1], (where, value, outcomes)  # one loader: both accept, or both refuse


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("kind",), ["greedy"]),
        (("nvec",), "3,4,5"),
        (("obs_dim",), "35"),
        (("scenario",), None),
        (("rng_state",), {"bit_generator": "PCG64", "state": "x"}),
        (("config", "hidden"), 10**9),
        (("config", "hidden"), "64"),
    ],
)
def test_named_damage_is_an_artifact_error(
    artifacts: dict[str, Path], tmp_path: Path, where: tuple[str, ...], value: Any
) -> None:
    path = tmp_path / "reinforce"
    shutil.copytree(artifacts["reinforce"], path)
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps(_replace(manifest, where, value, False)))
    start = time.perf_counter()
    with pytest.raises(ArtifactError):
        load_policy(path)
    assert time.perf_counter() - start < 2.0
