"""``adrl simulate``: write logged decisions of a logging policy in a scenario."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from adrl.commands import cli_errors, console
from adrl.io import check_output
from adrl.scenario import resolve_scenario
from adrl.simulate import SimulationSummary, parse_epsilon, simulate


class LoggingPolicy(StrEnum):
    random = "random"
    epsilon_greedy = "epsilon-greedy"


def summary_table(s: SimulationSummary, title: str = "simulated logs") -> Table:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [
        ("users (user-days)", f"{s.n_users:,}"),
        ("decisions", f"{s.n_decisions:,}"),
        ("impressions", f"{s.n_impressions:,}"),
        ("impressions per user", f"{s.impressions_per_user:.2f}"),
        ("CTR", f"{s.ctr:.2%}"),
        ("conversions per click", f"{s.conversion_rate:.2%}"),
        ("churn rate", f"{s.churn_rate:.2%}"),
        ("mean return per user-day", f"{s.mean_return:.4f}"),
        ("impressions / s", f"{s.impressions_per_second:,.0f}"),
        ("file", s.out),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        out: Annotated[Path, typer.Option(help="parquet file to write (atomically)")] = Path("runs/logs.parquet"),
        scenario: Annotated[
            Path | None, typer.Option(help="scenario YAML (default: the built-in default market)")
        ] = None,
        users: Annotated[int, typer.Option(min=1, help="user-days to simulate")] = 10_000,
        logging_policy: Annotated[LoggingPolicy, typer.Option(help="policy that chose the logged actions")] = (
            LoggingPolicy.epsilon_greedy
        ),
        epsilon: Annotated[
            str,
            typer.Option(
                help="exploration rate of epsilon-greedy: one rate in [0, 1], or three 'delay,slot,creative' "
                "(e.g. 1,0.8,0.6 randomises timing fully and supports off-policy evaluation of timing policies)"
            ),
        ] = "0.3",
        seed: Annotated[int, typer.Option(min=0, help="random seed (same seed, same file)")] = 0,
        chunk_users: Annotated[int, typer.Option(min=1, help="users simulated per chunk (bounds memory)")] = 65_536,
        json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
        force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
    ) -> None:
        """Simulate user-days under a logging policy and write every decision to parquet.

        Example: adrl simulate --scenario configs/scenarios/default.yaml --users 10000
        --logging-policy epsilon-greedy --seed 0 --out runs/logs.parquet
        """
        with cli_errors(sigterm=True):
            rates = parse_epsilon(epsilon)
            sc = resolve_scenario(scenario)
            check_output(out, kind="file", force=force)
            summary = simulate(
                sc,
                n_users=users,
                out=out,
                logging_policy=logging_policy.value,
                epsilon=rates,
                seed=seed,
                chunk_users=chunk_users,
                progress=not json_out,
            )
            if json_out:
                console.print_json(json.dumps(summary.as_dict()))
            else:
                console.print(summary_table(summary))
