"""``adrl quickstart``: the whole loop on the default market, ending in report.html and the best policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from adrl.commands import cli_errors, console
from adrl.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart_cmd(
        out: Annotated[Path, typer.Option(help="directory for logs, models, runs and report.html")] = Path(
            "runs/quickstart"
        ),
        fast: Annotated[bool, typer.Option("--fast", help="a sub-minute smoke-sized run")] = False,
        seed: Annotated[int, typer.Option(min=0, help="random seed of every stage")] = 0,
        scenario: Annotated[Path | None, typer.Option(help="scenario YAML (default market if omitted)")] = None,
        force: Annotated[bool, typer.Option("--force", help="replace an earlier quickstart in --out")] = False,
        epsilon: Annotated[
            str | None,
            typer.Option(help="the logger's exploration: one rate or 'delay,slot,creative' (default 0.3)"),
        ] = None,
        loop_users: Annotated[
            int | None,
            typer.Option(
                min=0,
                help="closed loop: deploy a first PPO with exploration on the ground truth for this "
                "many user-days, then refit and retrain on all logs (0: off, the default)",
            ),
        ] = None,
        loop_anchor: Annotated[
            float | None,
            typer.Option(
                min=0.0,
                help="with --loop-users: the retrained PPO starts from the deployed one, kept near it by this "
                "weight on KL(deployed || retrained) (0: a warm start only)",
            ),
        ] = None,
    ) -> None:
        """Simulate logs, fit the behavior model, train agents on it, evaluate them and write a report.

        Example: adrl quickstart --out runs/quickstart
        """
        from dataclasses import replace

        from adrl.quickstart import DEFAULT_BUDGET, FAST_BUDGET, run_quickstart
        from adrl.simulate import parse_epsilon

        with cli_errors():
            eps = parse_epsilon(epsilon) if epsilon is not None else None
            budget = None
            if loop_anchor is not None and not loop_users:
                raise ConfigError("--loop-anchor needs --loop-users N (N > 0): it shapes the closed loop's retraining")
            if loop_users is not None:
                budget = replace(FAST_BUDGET if fast else DEFAULT_BUDGET, loop_users=loop_users)
            if budget is not None and loop_anchor is not None:
                budget = replace(budget, loop_warm_start=True, loop_anchor=loop_anchor)
            r = run_quickstart(out, fast=fast and budget is None, seed=seed, scenario=scenario, force=force,
                               epsilon=eps, log=console.print, budget=budget)  # fmt: skip
            t = Table(title="policies on the ground-truth world (agents trained on the learned simulator)")
            for col in ("policy", "mean return", "95% CI", "CTR", "ads / user-day", "churn"):
                t.add_column(col, justify="left" if col == "policy" else "right")
            for e in sorted(r.evaluations, key=lambda x: -x.overall.mean_return):
                m = e.overall
                style = "bold green" if e.name == r.best else None
                t.add_row(e.name, f"{m.mean_return:.4f}", f"[{m.ci_low:.4f}, {m.ci_high:.4f}]", f"{m.ctr:.2%}",
                          f"{m.impressions_per_user:.2f}", f"{m.churn_rate:.1%}", style=style)  # fmt: skip
            console.print(t)
            if r.selected:
                est = r.ope[r.selected]["estimated_return"]
                true_best = r.ope[r.best]["true_return"]
                picked = r.ope[r.selected]["true_return"]
                regret = (true_best - picked) / abs(true_best) if true_best else float("nan")
                console.print(
                    f"offline selection ({est['estimator']}, return per user-day): {r.selected}, estimated "
                    f"{est['value']:.4f} [{est['lower']:.4f}, {est['upper']:.4f}], true {picked:.4f}; true best "
                    f"{r.best} ({true_best:.4f}), regret {regret:.1%}\n{r.selection.get('message', '')}"
                )
            console.print(
                f"\nreport: {r.report}\nexported policy ({r.selected or r.best}, the offline pick): {r.best_policy}"
            )
            console.print(
                "\nnext:\n"
                f"  ADRL_LOG_KEY=$(openssl rand -hex 32) adrl serve --policy {r.best_policy} --port 8000 "
                "--log-dir runs/serve-log\n"
                f"  python -c \"import adrl; p = adrl.load_policy('{r.best_policy}'); "
                "print(p.decide(user={'segment': 'commuter'}, context={'hour': 8}))\"",
                soft_wrap=True,
            )
