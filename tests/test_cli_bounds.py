"""CLI budgets and outputs: absurd counts are refused with their bound at once, a stopped simulate leaves no
temporary file, and serve's append-only log is continued or refused, never replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adrl.agents.baselines import GreedyPolicy
from adrl.cli import app
from adrl.scenario import Scenario

QUINTILLIONS = str(5 * 10**18)


@pytest.mark.parametrize(
    ("args", "bound"),
    [
        (["simulate", "--users", QUINTILLIONS], "1..1,000,000,000 user-days"),
        (["simulate", "--users", "10", "--chunk-users", QUINTILLIONS], "1..4,194,304"),
        (["evaluate", "--episodes", QUINTILLIONS], "2..10,000,000 user-days"),
        (["train", "--agent", "greedy", "--steps", QUINTILLIONS], "at most 1,000,000,000,000"),
        (["train", "--agent", "greedy", "--n-envs", QUINTILLIONS], "at most 1,048,576"),
    ],
    ids=["simulate-users", "simulate-chunk", "evaluate-episodes", "train-steps", "train-envs"],
)
def test_a_count_in_the_quintillions_is_refused_with_its_bound(tmp_path: Path, args: list[str], bound: str) -> None:
    if args[0] == "evaluate":
        GreedyPolicy(Scenario()).save(tmp_path / "greedy")
        args = [*args, "--policy", str(tmp_path / "greedy")]
    out = tmp_path / ("run" if args[0] == "train" else "out.parquet")
    if args[0] != "evaluate":
        args = [*args, "--out", str(out)]
    start = time.perf_counter()
    result = CliRunner().invoke(app, args)
    assert time.perf_counter() - start < 10  # refused up front (the policy load is most of it), not run
    assert result.exit_code == 2, result.output
    assert bound in " ".join(result.output.split()) and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "greedy") == []  # nothing written, no temp file


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_simulate_leaves_no_temporary_file(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "logs.parquet"
    cmd = [sys.executable, "-m", "adrl.cli", "simulate", "--users", "50000000", "--chunk-users", "4096",
           "--out", str(out)]  # fmt: skip
    # SIGINT back to its default in the child: a shell's background job inherits it ignored, and Python keeps it so
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        end = time.monotonic() + 60
        while not list(tmp_path.glob(".logs.parquet.*.tmp")) and time.monotonic() < end:
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            time.sleep(0.05)
        assert list(tmp_path.glob(".logs.parquet.*.tmp")), "simulate never started writing"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, proc.stderr.read().decode()  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the temp file nor a partial output


def test_serve_continues_its_log_and_refuses_a_log_dir_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adrl.serving import PolicyService, ServeConfig

    monkeypatch.setenv("ADRL_LOG_KEY", "cli-bounds-key-0123456789abcdef")
    GreedyPolicy(Scenario()).save(tmp_path / "greedy")
    (tmp_path / "afile").write_text("x")
    runner = CliRunner()
    for log_dir, message in [
        (tmp_path / "afile", "is a file; expected a directory path"),
        (tmp_path / "afile" / "log", "cannot write under"),
    ]:
        result = runner.invoke(app, ["serve", "--policy", str(tmp_path / "greedy"), "--log-dir", str(log_dir)])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    # a log of the same market is continued (append-only: nothing of it is replaced)
    cfg = ServeConfig(policy=tmp_path / "greedy", log_dir=tmp_path / "log", feedback_window=60.0)
    with PolicyService.from_config(cfg) as service:
        first = service.decide({"user": {"segment": "office"}, "context": {"hour": 9}})["event_id"]
    journal = sorted((tmp_path / "log" / "journal").iterdir())
    with PolicyService.from_config(cfg) as service:
        assert service.log.stats.recovered_pending == 1
        second = service.decide({"user": {"segment": "office"}, "context": {"hour": 9}})["event_id"]
    assert int(second.rsplit("-", 1)[1]) == int(first.rsplit("-", 1)[1]) + 1
    assert set(journal) < set((tmp_path / "log" / "journal").iterdir())  # old segments kept, a new one added
    # a log of another market is refused, saying it is never replaced
    other = Scenario.model_validate({**Scenario().model_dump(mode="json"), "horizon": Scenario().horizon + 1})
    GreedyPolicy(other).save(tmp_path / "other")
    result = runner.invoke(app, ["serve", "--policy", str(tmp_path / "other"), "--log-dir", str(tmp_path / "log")])
    assert result.exit_code == 2 and "never replaced" in result.output
