"""The registration tables are complete and the library never reaches up into the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from adrl.agents.factory import load_preset, preset_path
from adrl.agents.registry import AGENTS, build_agent, known_kinds
from adrl.errors import ConfigError
from adrl.evaluation import simulator_score
from adrl.ope.run import ESTIMATORS, SCOPE
from adrl.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_in_the_table_ships_a_preset_that_builds(name: str) -> None:
    assert preset_path(name).is_file(), f"agent {name!r} has no preset in agents/presets/"
    preset = load_preset(name)
    params = dict(preset.params)
    if name == "pacing":
        params.setdefault("min_gap", 3)  # the preset leaves it to the tuner; give one to build without a simulator
    score = simulator_score(Scenario(), None, seed=0, n_episodes=50)  # rules tune what their preset leaves open
    agent = build_agent(name, Scenario(), params, seed=0, score=score)
    assert hasattr(agent, "predict") and hasattr(agent, "action_probabilities")
    assert agent.kind in known_kinds()


def test_an_unknown_agent_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="q_learning"):
        build_agent("q_learnin", Scenario(), {}, seed=0)


def test_pacing_without_a_gap_needs_a_simulator_to_tune_it_on() -> None:
    with pytest.raises(ConfigError, match="min_gap"):
        build_agent("pacing", Scenario(), {}, seed=0)
    gap = build_agent("pacing", Scenario(), {}, seed=0, score=lambda p: -abs(p.min_gap - 4)).min_gap
    assert gap == 4


def test_every_estimator_has_a_scope_and_one_entry_point() -> None:
    for name, cls in ESTIMATORS.items():
        assert SCOPE[name] in ("per-decision", "episode")
        assert SCOPE[name] == "per-decision" or callable(getattr(cls, "run", None)), name


def test_nothing_outside_the_cli_imports_adrl_commands() -> None:
    offenders = []
    for folder in ("adrl", "envs", "agents", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "adrl" / "commands") or path == ROOT / "adrl" / "cli.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "adrl.commands" or n.startswith("adrl.commands.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}")
    assert not offenders, f"only adrl/cli.py and adrl/commands may import adrl.commands: {offenders}"
