"""``adrl evaluate``: compare policies online in a simulator, overall and per user segment."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from adrl.commands import cli_errors, console
from adrl.errors import ConfigError
from adrl.evaluation import Evaluation, evaluate_policies
from adrl.features import FeatureLayout
from adrl.io import atomic_open, check_output, write_json_atomic
from adrl.training import resolve_env

BY_CHOICES = ("segment",)


def policy_name(path: Path) -> str:
    """``runs/q/policy`` -> ``q``; any other directory -> its own name."""
    path = Path(path)
    return path.parent.name if path.name == "policy" and path.parent.name else path.name


def load_policies(paths: list[Path], layout: FeatureLayout) -> dict[str, Any]:
    from adrl.agents.registry import load_policy_artifact

    out: dict[str, Any] = {}
    for p in paths:
        name = policy_name(p)
        while name in out:
            name += "'"
        out[name] = load_policy_artifact(p, expect_layout=layout)
    return out


def comparison_table(evals: list[Evaluation], title: str) -> Table:
    t = Table(title=title)
    for col in ("policy", "mean return", "95% CI", "CTR", "conv. rate", "ads / user-day", "churn", "revenue"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for e in evals:
        m = e.overall
        t.add_row(
            e.name,
            f"{m.mean_return:.4f}",
            f"[{m.ci_low:.4f}, {m.ci_high:.4f}]",
            f"{m.ctr:.2%}",
            f"{m.conversion_rate:.3%}",
            f"{m.impressions_per_user:.2f}",
            f"{m.churn_rate:.1%}",
            f"{m.revenue_per_user:.4f}",
        )
    return t


def segment_table(e: Evaluation) -> Table:
    t = Table(title=f"{e.name} by segment")
    for col in ("segment", "users", "mean return", "95% CI", "CTR", "ads / user-day", "churn", "revenue"):
        t.add_column(col, justify="left" if col == "segment" else "right")
    for seg, m in e.by_segment.items():
        t.add_row(
            seg,
            f"{m.n_users:,}",
            f"{m.mean_return:.4f}",
            f"[{m.ci_low:.4f}, {m.ci_high:.4f}]",
            f"{m.ctr:.2%}",
            f"{m.impressions_per_user:.2f}",
            f"{m.churn_rate:.1%}",
            f"{m.revenue_per_user:.4f}",
        )
    return t


def write_outputs(evals: list[Evaluation], out: Path, slots: list[str], creatives: list[str]) -> list[Path]:
    """Write evaluation.json, evaluation.csv (overall and per segment) and shown_by_hour.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "evaluation.json", {"policies": [e.as_dict() for e in evals]})
    with atomic_open(out / "evaluation.csv", "w") as f:
        fields = ["policy", "segment", *evals[0].overall.as_dict().keys()]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for e in evals:
            w.writerow({"policy": e.name, "segment": "all", **e.overall.as_dict()})
            for seg, m in e.by_segment.items():
                w.writerow({"policy": e.name, "segment": seg, **m.as_dict()})
    plot = out / "shown_by_hour.png"
    plot_shown_by_hour(evals, plot, slots, creatives)
    return [out / "evaluation.json", out / "evaluation.csv", plot]


def plot_shown_by_hour(evals: list[Evaluation], path: Path, slots: list[str], creatives: list[str]) -> None:
    """One row per policy: ads per user by hour (stacked by slot), delay choices by hour, creatives by hour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.arange(24)
    fig, axes = plt.subplots(len(evals), 3, figsize=(15, 2.8 * len(evals)), squeeze=False)
    for row, e in zip(axes, evals, strict=True):
        n_users = max(e.overall.n_users, 1)
        bottom = np.zeros(24)
        for k, slot in enumerate(slots):
            per_user = e.slot_by_hour[:, k] / n_users
            row[0].bar(hours, per_user, bottom=bottom, label=slot)
            bottom += per_user
        row[0].set_title(f"{e.name}: where (ads per user by hour)")
        row[0].legend(fontsize=7)
        delays = e.delay_by_hour / np.maximum(e.delay_by_hour.sum(axis=1, keepdims=True), 1)
        row[1].imshow(delays.T, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        row[1].set_title(f"{e.name}: when (delay choice by decision hour)")
        row[1].set_ylabel("delay index")
        creative = e.creative_by_hour / np.maximum(e.creative_by_hour.sum(axis=1, keepdims=True), 1)
        row[2].imshow(creative.T, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1)
        row[2].set_yticks(range(len(creatives)), creatives, fontsize=6)
        row[2].set_title(f"{e.name}: what (creative share by hour)")
        for ax in row:
            ax.set_xlabel("hour of day")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        policy: Annotated[list[Path], typer.Option(help="policy artifact directory (repeat to compare)")],
        env: Annotated[str, typer.Option(help="registered environment id")] = "adrl/AdPlacement-v0",
        behavior: Annotated[
            Path | None, typer.Option(help="fitted behavior model dir (for adrl/AdPlacement-Learned-v0)")
        ] = None,
        scenario: Annotated[Path | None, typer.Option(help="scenario YAML (default market if omitted)")] = None,
        episodes: Annotated[int, typer.Option(min=2, help="user-days per policy")] = 2000,
        seed: Annotated[int, typer.Option(min=0, help="seed of the users and outcomes (same for every policy)")] = 0,
        by: Annotated[str | None, typer.Option(help="also break every metric down by: segment")] = None,
        out: Annotated[Path | None, typer.Option(help="directory for evaluation.json/.csv and a plot")] = None,
        force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
    ) -> None:
        """Evaluate policies on the same simulated users: return with 95% CI, CTR, churn, revenue.

        Example: adrl evaluate --policy runs/q_learning/policy --policy runs/greedy/policy
        --env adrl/AdPlacement-v0 --episodes 2000 --seed 0 --by segment
        """
        with cli_errors(sigterm=True):
            if by is not None and by not in BY_CHOICES:
                raise ConfigError(f"--by must be one of {list(BY_CHOICES)}, got {by!r}")
            if out is not None:
                check_output(out, kind="directory", force=force)
            spec = resolve_env(env, scenario, behavior)
            policies = load_policies(policy, FeatureLayout.from_scenario(spec.scenario))
            evals = evaluate_policies(
                policies, spec.scenario, n_episodes=episodes, seed=seed, response=spec.response, progress=True
            )
            console.print(comparison_table(evals, f"{env}: {episodes:,} user-days per policy, seed {seed}"))
            if by == "segment":
                for e in evals:
                    console.print(segment_table(e))
            if out is not None:
                sc = spec.scenario
                files = write_outputs(evals, out, [s.name for s in sc.slots], [c.name for c in sc.creatives])
                console.print("wrote " + ", ".join(str(f) for f in files))
