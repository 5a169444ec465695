"""adrl train / adrl evaluate as a user runs them: presets, overrides, interrupts and resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adrl.cli import app
from adrl.training import train_run

ADRL = [sys.executable, "-m", "adrl.cli"]


def metric_steps(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def test_train_exports_policy_curve_and_metrics(tmp_path: Path) -> None:
    out = tmp_path / "q"
    summary = train_run(
        agent_name="q_learning",
        env_id="adrl/AdPlacement-v0",
        out=out,
        steps=600_000,
        n_envs=1024,
        overrides={"log_every": 100_000},
        checkpoint_every=200_000,
        progress=False,
    )
    assert (out / "policy" / "manifest.json").is_file() and (out / "learning_curve.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file() and any((out / "tb").iterdir())
    steps = metric_steps(out)
    assert steps == sorted(steps) and steps[-1] >= 600_000 and summary["steps_done"] >= 600_000
    assert len(list((out / "checkpoints").glob("step-*"))) <= 2  # old checkpoints are pruned


def test_resume_continues_the_step_count_and_the_curve(tmp_path: Path) -> None:
    out = tmp_path / "r"
    common = dict(agent_name="reinforce", env_id="adrl/AdPlacement-v0", out=out, n_envs=128,
                  overrides={"hidden": 16, "log_every": 5_000}, checkpoint_every=5_000, progress=False)  # fmt: skip
    first = train_run(steps=12_000, **common)  # type: ignore[arg-type]
    before = metric_steps(out)
    second = train_run(steps=24_000, resume=True, **common)  # type: ignore[arg-type]
    after = metric_steps(out)
    assert after[: len(before)] == before and after == sorted(set(after))  # extended, no duplicated steps
    assert second["steps_done"] >= 24_000 > first["steps_done"]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    resumed = len(before)  # the first row the resumed run wrote
    for column in ("episodes", "wall_seconds"):  # running totals continue from the checkpoint, never restart
        values = [float(r[column]) for r in rows]
        assert values == sorted(values), (column, values)
        assert values[resumed] > values[resumed - 1] > 0, (column, values)


def test_an_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "g"
    assert runner.invoke(app, ["train", "--agent", "greedy", "--out", str(out)]).exit_code == 0
    manifest = (out / "policy" / "manifest.json").read_text()
    result = runner.invoke(app, ["train", "--agent", "greedy", "--out", str(out)])
    assert (
        result.exit_code == 2 and "already exists; pass --force to replace it, --resume to continue it" in result.output
    )
    assert (out / "policy" / "manifest.json").read_text() == manifest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "nope"], "unknown agent 'nope'"),
        (["--agent", "q_learning", "--set", "gamma=2"], "gamma must be in [0, 1]"),
        (["--agent", "q_learning", "--set", "gama=0.9"], "unknown parameter(s) ['gama']"),
        (["--agent", "q_learning", "--set", "novalue"], "--set expects key=value"),
        (["--agent", "q_learning", "--env", "CartPole-v1"], "unknown environment 'CartPole-v1'"),
        (["--agent", "q_learning", "--env", "adrl/AdPlacement-Learned-v0"], "needs --behavior"),
    ],
)
def test_bad_train_options_are_clear(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["train", *args, "--out", str(tmp_path / "x"), "--steps", "10"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((run / "checkpoints").glob("step-*/manifest.json")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_training_resumes_from_its_checkpoint(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    cmd = [*ADRL, "train", "--agent", "q_learning", "--out", str(out), "--n-envs", "512",
           "--checkpoint-every", "200000", "--set", "log_every=100000"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.Popen([*cmd, "--steps", "500000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        _wait_for_checkpoint(out, proc)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGINT:
        assert proc.returncode == 130  # a clean stop with a fresh checkpoint, not a traceback
        assert b"--resume" in (proc.stderr.read() if proc.stderr else b"")
    ckpt = max(int(p.name.removeprefix("step-")) for p in (out / "checkpoints").glob("step-*"))
    target = ckpt + 400_000
    done = subprocess.run([*cmd, "--steps", str(target), "--resume"], capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    steps = metric_steps(out)
    assert steps == sorted(set(steps)) and steps[-1] >= target
    assert (out / "policy" / "manifest.json").is_file()


def test_evaluate_compares_policies_by_segment_and_writes_outputs(tmp_path: Path) -> None:
    runner = CliRunner()
    for agent in ("greedy", "pacing"):
        assert runner.invoke(app, ["train", "--agent", agent, "--out", str(tmp_path / agent)]).exit_code == 0
    result = runner.invoke(
        app,
        ["evaluate", "--policy", str(tmp_path / "greedy" / "policy"), "--policy", str(tmp_path / "pacing" / "policy"),
         "--episodes", "3000", "--by", "segment", "--out", str(tmp_path / "eval")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "greedy" in text and "pacing" in text and "commuter" in text
    assert (tmp_path / "eval" / "evaluation.csv").read_text().count("\n") == 1 + 2 * 5  # overall + 4 segments each
    assert (tmp_path / "eval" / "shown_by_hour.png").stat().st_size > 1000
    bad = runner.invoke(app, ["evaluate", "--policy", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
