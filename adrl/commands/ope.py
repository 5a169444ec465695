"""``adrl ope``: estimate a policy's value from logged decisions (adrl logs or the Open Bandit Dataset)."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from adrl.commands import cli_errors, console
from adrl.errors import ConfigError
from adrl.io import atomic_open
from adrl.ope.run import DEFAULT_ESTIMATORS, SCOPE, OPEResult, evaluate, parse_estimators

OBD_ESTIMATORS = ("dm", "ips", "snips", "dr", "sndr", "switch-dr")


class LogFormat(StrEnum):
    adrl = "adrl"
    obd = "obd"


def run_adrl(
    logs: Path,
    policy: str,
    behavior: Path | None,
    estimators: list[str],
    *,
    seed: int,
    n_boot: int,
    alpha: float,
    n_folds: int,
) -> dict[str, Any]:
    from adrl.agents.registry import load_policy_artifact, read_policy_manifest
    from adrl.behavior.response import behavior_q
    from adrl.features import FeatureLayout
    from adrl.ope.data import read_adrl_logs

    policy_dir = Path(policy)
    _, scenario = read_policy_manifest(policy_dir)
    layout = FeatureLayout.from_scenario(scenario)
    target = load_policy_artifact(policy_dir, expect_layout=layout)
    data = read_adrl_logs(logs, layout)
    q = behavior_q(behavior, scenario) if behavior is not None else None
    result = evaluate(
        data, target.action_probabilities, estimators, rng=np.random.default_rng(seed), q=q, n_folds=n_folds,
        alpha=alpha, n_boot=n_boot,
    )  # fmt: skip
    out = result.as_dict()
    if behavior is not None:
        out["reward_model"] = f"behavior model {behavior}"
    return {"logs": str(logs), "policy": str(policy_dir), "format": "adrl", "alpha": alpha, **out}


def run_obd(
    logs: Path,
    policy: str,
    estimators: list[str],
    *,
    campaign: str,
    logging_policy: str,
    seed: int,
    n_boot: int,
    alpha: float,
    n_folds: int,
    n_sim: int,
) -> dict[str, Any]:
    """Evaluate ``policy`` ("bts" or "random") from ``logging_policy``'s OBD logs; compare with its own logs."""
    from adrl.ope.obd import POLICIES, bts_action_dist, context_free_probs, read_bts_prior, read_obd

    if policy not in POLICIES:
        raise ConfigError(f"with --format obd, --policy must be one of {POLICIES}, got {policy!r}")
    bad = [e for e in estimators if e not in OBD_ESTIMATORS]
    if bad:
        raise ConfigError(f"OBD rows are single decisions; estimators {bad} need episodes (use {OBD_ESTIMATORS})")
    seeds = np.random.SeedSequence(seed).spawn(2)
    logged = read_obd(logs, logging_policy, campaign)
    if policy == "bts":
        a, b = read_bts_prior(logs, campaign)
        if a.shape[0] != logged.n_items:
            raise ConfigError(f"prior_bts.yaml has {a.shape[0]} items for {campaign!r}, the logs {logged.n_items}")
        dist = bts_action_dist(a, b, rng=np.random.default_rng(seeds[0]), n_sim=n_sim)
    else:
        dist = np.full((logged.n_items, 3), 1.0 / logged.n_items)
    result = evaluate(
        logged.data, context_free_probs(dist, logged.position_col), estimators, rng=np.random.default_rng(seeds[1]),
        n_folds=n_folds, alpha=alpha, n_boot=n_boot,
    )  # fmt: skip
    out: dict[str, Any] = {
        "logs": str(logs),
        "format": "obd",
        "campaign": campaign,
        "logging_policy": logging_policy,
        "policy": policy,
        "alpha": alpha,
        **result.as_dict(),
    }
    own = Path(logs) / policy / campaign / f"{campaign}.csv"  # the policy's own logs, when given the dataset root
    if Path(logs).is_dir() and own.is_file():
        truth = read_obd(logs, policy, campaign).on_policy_value
        out["on_policy_value"] = truth
        for name, e in result.estimates.items():
            out["estimates"][name]["relative_error"] = abs(e.value - truth) / truth if truth else math.nan
    return out


def results_table(out: dict[str, Any]) -> Table:
    truth = out.get("on_policy_value")
    title = f"off-policy estimates of {out['policy']} ({out['n_rows']:,} decisions, {out['n_episodes']:,} episodes)"
    if truth is not None:
        title += f"; on-policy value {truth:.5f}"
    t = Table(title=title)
    for col in ("estimator", "scope", "estimate", f"{1 - out['alpha']:.0%} CI", "ESS", "max weight"):
        t.add_column(col, justify="left" if col in ("estimator", "scope") else "right")
    if truth is not None:
        t.add_column("rel. error", justify="right")

    def fmt(v: float | None, spec: str = ".5f") -> str:
        return "-" if v is None else format(v, spec)

    for name, e in out["estimates"].items():
        row = [name, e["scope"], fmt(e["value"]), f"[{fmt(e['lower'])}, {fmt(e['upper'])}]", fmt(e["ess"], ",.1f"),
               fmt(e["max_weight"], ",.1f")]  # fmt: skip
        if truth is not None:
            row.append(fmt(e.get("relative_error"), ".1%"))
        t.add_row(*row)
    return t


def register(app: typer.Typer) -> None:
    @app.command("ope")
    def ope_cmd(
        logs: Annotated[Path, typer.Option(help="adrl log (parquet file or directory, e.g. a server log) or OBD dir")],
        policy: Annotated[str, typer.Option(help="policy artifact directory (OBD: 'bts' or 'random')")],
        behavior: Annotated[
            Path | None, typer.Option(help="behavior-model artifact for DM/DR (default: fit on the logs)")
        ] = None,
        estimators: Annotated[
            str | None, typer.Option(help=f"comma-separated, from {','.join(DEFAULT_ESTIMATORS)}")
        ] = None,
        out: Annotated[Path | None, typer.Option(help="also write the results as JSON here")] = None,
        log_format: Annotated[LogFormat, typer.Option("--format", help="adrl logs or the Open Bandit Dataset")] = (
            LogFormat.adrl
        ),
        campaign: Annotated[str, typer.Option(help="OBD campaign: all, men or women")] = "all",
        logging_policy: Annotated[str, typer.Option(help="OBD policy whose logs are used")] = "random",
        seed: Annotated[int, typer.Option(min=0, help="seed of folds and bootstrap (same seed, same output)")] = 0,
        n_boot: Annotated[int, typer.Option(min=0, help="bootstrap resamples (0: normal-approximation CI)")] = 1000,
        alpha: Annotated[float, typer.Option(min=1e-6, max=0.5, help="1 - confidence level")] = 0.05,
        folds: Annotated[int, typer.Option(min=2, help="cross-fitting folds for reward models and FQE")] = 2,
        n_sim: Annotated[int, typer.Option(min=1000, help="OBD: Monte-Carlo rounds for BTS's distribution")] = 100_000,
        json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    ) -> None:
        """Estimate a policy's value from logged decisions with off-policy estimators.

        Example: adrl ope --logs runs/logs.parquet --policy runs/A/policy --estimators dm,ips,snips,dr,wdr,fqe

        Open Bandit Dataset: adrl ope --format obd --logs ../shared/data/obd --campaign all --policy bts
        """
        with cli_errors():
            if log_format is LogFormat.obd:
                names = parse_estimators(estimators or ",".join(OBD_ESTIMATORS))
                result = run_obd(
                    logs, policy, names, campaign=campaign, logging_policy=logging_policy, seed=seed,
                    n_boot=n_boot, alpha=alpha, n_folds=folds, n_sim=n_sim,
                )  # fmt: skip
            else:
                names = parse_estimators(estimators or ",".join(DEFAULT_ESTIMATORS))
                result = run_adrl(logs, policy, behavior, names, seed=seed, n_boot=n_boot, alpha=alpha, n_folds=folds)
            if out is not None:
                with atomic_open(out, "w") as f:
                    json.dump(result, f, indent=2)
            if json_out:
                console.print_json(json.dumps(result))
            else:
                console.print(results_table(result))
                for line in result.get("warnings", []):
                    console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)


__all__ = ["SCOPE", "OPEResult", "register"]
