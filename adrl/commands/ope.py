"""``adrl ope``: estimate a policy's value from logged decisions (adrl logs or the Open Bandit Dataset)."""

from __future__ import annotations

import functools
import json
import math
from enum import StrEnum
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from adrl.commands import cli_errors, console
from adrl.errors import ConfigError, FeatureMismatch
from adrl.io import atomic_open, check_output
from adrl.ope.estimate import Estimate
from adrl.ope.run import ALL_ESTIMATORS, ESTIMAND_DEFAULTS, SCOPE, OPEResult, evaluate, parse_estimators

OBD_ESTIMATORS = ("dm", "ips", "snips", "dr", "sndr", "switch-dr")


class LogFormat(StrEnum):
    adrl = "adrl"
    obd = "obd"


class Estimand(StrEnum):
    ret = "return"
    step = "step"


def run_adrl(
    logs: Path,
    policies: list[str],
    behavior: list[Path],
    estimators: list[str],
    *,
    estimand: str = "return",
    seed: int,
    n_boot: int,
    alpha: float,
    n_folds: int,
    select_by: str | None = None,
    fit_epochs: int = 5,
    log: Any = None,
    stream: bool | None = None,
    max_starts: int | None = None,
    sample_episodes: int = 20_000,
    engine: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Evaluate every policy of ``policies`` on the same logs and rank them (see :mod:`adrl.ope.selection`).

    ``stream`` (None: when the log has more than :data:`STREAM_ROWS` decisions and the estimand is the return)
    evaluates in one streamed pass (:mod:`adrl.ope.stream`): PDIS, WIS and the model-based estimate see every
    episode (the latter at most ``max_starts`` starts, 100,000 when None), the others a sample of about
    ``sample_episodes`` episodes.
    """
    from adrl.agents.registry import load_policy_artifact, read_policy_manifest
    from adrl.behavior.response import behavior_q
    from adrl.features import FeatureLayout
    from adrl.ope.data import interference_note, read_adrl_logs
    from adrl.ope.members import calibrate_members, load_members, member_dirs
    from adrl.ope.model_based import Simulators, logged_return
    from adrl.ope.returns import RETURN_ESTIMATORS
    from adrl.ope.selection import select
    from adrl.world import World

    if not policies:
        raise ConfigError("give at least one --policy")
    _, scenario = read_policy_manifest(Path(policies[0]))
    layout = FeatureLayout.from_scenario(scenario)
    targets = {}
    for p in policies:
        _, sc_p = read_policy_manifest(Path(p))
        if FeatureLayout.from_scenario(sc_p).hash != layout.hash:
            raise FeatureMismatch(
                f"{p} was built for feature layout {FeatureLayout.from_scenario(sc_p).hash}, {policies[0]} for "
                f"{layout.hash}: candidates compared on one log must share its scenario"
            )
        targets[p] = load_policy_artifact(Path(p), expect_layout=layout)
    from adrl.ope import stream as streamed

    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {engine!r}")
    if engine == "ray" and stream is False:
        raise ConfigError("--engine ray runs the streamed pass on the shards: drop --no-stream")
    if address is not None and engine != "ray":
        raise ConfigError("--address points at a Ray cluster: use it with --engine ray")
    if stream is None:
        stream = engine == "ray" or (estimand == "return" and streamed.count_rows(logs) > STREAM_ROWS)
    if stream and estimand != "return":
        raise ConfigError("the one-step estimand reads the log in memory: drop --stream")
    data = None if stream else read_adrl_logs(logs, layout)
    notes: list[str] = []
    shared = interference_note(logs)
    if shared is not None:
        notes.append(shared)
    sim = None
    dirs = member_dirs(behavior) if behavior else []
    if any(k in RETURN_ESTIMATORS for k in estimators):
        if dirs:
            members = load_members(dirs, scenario)
        else:
            from adrl.behavior import FitConfig, LearnedResponse, fit_adrl

            fitted = fit_adrl(logs, scenario, FitConfig(epochs=fit_epochs, baselines=False), progress=False)
            members = (LearnedResponse(fitted.model, scenario),)
            notes.append(
                f"fitted one behavior model on the logs ({fit_epochs} epochs): its interval leaves out the model's "
                "own uncertainty; pass --behavior (fitted members, e.g. adrl fit on bootstrap resamples) to include it"
            )
        if len(members) == 1 and dirs:
            notes.append("one behavior model: model-based intervals leave out the model's own uncertainty")
        # calibration in the large on these logs: a model's mean rates off by 10-20% bias every rollout's return
        sim = Simulators(World(scenario), calibrate_members(members, logs, layout))
    q = behavior_q(dirs[0], scenario) if dirs else None
    results: dict[str, dict[str, Any]] = {}
    raw: dict[str, OPEResult] = {}
    if stream:
        raw, logged = _streamed(logs, layout, targets, estimators, sim=sim, q=q, seed=seed, alpha=alpha,
                                n_boot=n_boot, n_folds=n_folds, max_starts=max_starts,
                                sample_episodes=sample_episodes, engine=engine, address=address)  # fmt: skip
        results = {p: r.as_dict() for p, r in raw.items()}
        notes.append(
            f"streamed: pdis, wis and model read every episode (model: up to {max_starts or 100_000:,} starts); "
            f"other estimators ran on a sample of {next(iter(raw.values())).extra['streamed']['sample_episodes']:,} "
            "episodes, and their intervals reflect that sample"
        )
    for k, (p, target) in enumerate(targets.items() if data is not None else ()):
        assert data is not None
        result = evaluate(
            data, target.action_probabilities, estimators, rng=np.random.default_rng([seed, k]), q=q,
            n_folds=n_folds, alpha=alpha, n_boot=n_boot, sim=sim, max_starts=max_starts,
        )  # fmt: skip
        raw[p], results[p] = result, result.as_dict()
        if q is not None:
            results[p]["reward_model"] = f"behavior model {dirs[0]}"
        if log is not None:
            log(f"evaluated {p} in {result.seconds:.1f} s")
    if data is None:
        pass  # the streamed pass computed the logged value
    elif estimand == "return":
        logged = logged_return(data, alpha=alpha)
    else:
        reward = data.reward
        se = float(reward.std(ddof=1)) / math.sqrt(reward.size) if reward.size > 1 else math.inf
        z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        mean = float(reward.mean())
        logged = Estimate(mean, mean - z * se, mean + z * se, reward.size, interval="normal")
    by = select_by or estimators[0]
    if by not in estimators:
        raise ConfigError(f"--select-by {by!r} is not among the estimators run ({', '.join(estimators)})")
    chosen = {p: r.estimates[by] for p, r in raw.items()}
    selection = select(chosen, logged.value, estimator=by)
    head: dict[str, Any] = {
        "logs": str(logs), "format": "adrl", "estimand": estimand, "alpha": alpha,
        "behavior": [str(d) for d in dirs], "logged_value": logged.as_dict(), "notes": notes,
    }  # fmt: skip
    if len(results) == 1:
        ((p, r),) = results.items()
        return {**head, "policy": p, **r, "selection": selection.as_dict()}
    return {**head, "policies": results, "selection": selection.as_dict()}


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


STREAM_ROWS = 2_000_000  # above this many logged decisions `adrl ope` streams the log by default


def _streamed(
    logs: Path,
    layout: Any,
    targets: dict[str, Any],
    estimators: list[str],
    *,
    sim: Any,
    q: Any,
    seed: int,
    alpha: float,
    n_boot: int,
    n_folds: int,
    max_starts: int | None,
    sample_episodes: int,
    engine: str = "local",
    address: str | None = None,
) -> tuple[dict[str, OPEResult], Estimate]:
    """Every target's estimates from one streamed pass, as :class:`OPEResult` (with a rich progress bar)."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from adrl.ope.stream import count_rows, evaluate_log

    t0 = time.perf_counter()
    common: dict[str, Any] = dict(sim=sim, q=q, seed=seed, alpha=alpha, n_boot=n_boot, n_folds=n_folds,
                                  max_starts=max_starts or 100_000, sample_episodes=sample_episodes)  # fmt: skip
    if engine == "ray":
        from adrl.agents.registry import load_action_probabilities
        from adrl.ope.ray_engine import evaluate_log_ray

        make = functools.partial(load_action_probabilities, tuple(targets), layout)
        res = evaluate_log_ray(logs, layout, make, estimators, address=address, **common)
    else:
        with Progress(TextColumn("reading the log"), BarColumn(), MofNCompleteColumn(), TextColumn("decisions"),
                      TimeRemainingColumn(), console=console, transient=True) as bar:  # fmt: skip
            task = bar.add_task("scan", total=count_rows(logs))
            res = evaluate_log(logs, layout, {p: t.action_probabilities for p, t in targets.items()}, estimators,
                               progress=lambda rows: bar.advance(task, rows), **common)  # fmt: skip
    scan_s = time.perf_counter() - t0 - sum(res.seconds_by_policy.values())
    out = {}
    for p, est in res.estimates.items():
        extra = {"streamed": {"engine": engine, "starts": res.n_starts, "sample_episodes": res.n_sample_episodes,
                              "scan_seconds": round(scan_s, 3)}}  # fmt: skip
        model = "behavior model" if q is not None else "ridge per action on the sampled episodes"
        out[p] = OPEResult(est, res.n_rows, res.n_episodes, model, res.seconds_by_policy[p] + scan_s, extra)
    return out, res.logged


SCOPE_LABEL = {"per-decision": "one-step value", "episode": "return / user-day"}


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

    for name, e in out["estimates"].items():
        row = [name, SCOPE_LABEL.get(e["scope"], e["scope"]), _fmt(e["value"]),
               f"[{_fmt(e['lower'])}, {_fmt(e['upper'])}]", _fmt(e["ess"], ",.1f"),
               _fmt(e["max_weight"], ",.1f")]  # fmt: skip
        if truth is not None:
            row.append(_fmt(e.get("relative_error"), ".1%"))
        t.add_row(*row)
    return t


def _fmt(v: float | None, spec: str = ".5f") -> str:
    return "-" if v is None else format(v, spec)


def ranking_table(out: dict[str, Any]) -> Table:
    """The candidates ranked by the selection estimator, against the logging policy's value."""
    sel = out["selection"]
    what = "return per user-day" if out.get("estimand", "return") == "return" else "one-step value"
    t = Table(title=f"ranking by {sel['estimator']} ({what}); logging policy's value {sel['logged_value']:.5f}")
    for col in ("rank", "policy", "estimate", f"{1 - out['alpha']:.0%} CI", "lower > logged"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for k, r in enumerate(sel["ranking"], 1):
        ok = r["policy"] in sel["qualifying"]
        t.add_row(str(k), r["policy"], _fmt(r["value"]), f"[{_fmt(r['lower'])}, {_fmt(r['upper'])}]",
                  "yes" if ok else "no")  # fmt: skip
    return t


def print_results(result: dict[str, Any]) -> None:
    rows = result["policies"].items() if "policies" in result else [(result["policy"], result)]
    for name, r in rows:
        console.print(results_table({**r, "alpha": result["alpha"], "policy": name}))
        for line in r.get("warnings", []):
            console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
    for line in result.get("notes", []):
        console.print(f"note: {line}", highlight=False)
    if "selection" in result:
        console.print(ranking_table(result))
        console.print(result["selection"]["message"], highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("ope")
    def ope_cmd(
        logs: Annotated[Path, typer.Option(help="adrl log (parquet file or directory, e.g. a server log) or OBD dir")],
        policy: Annotated[
            list[str], typer.Option(help="policy artifact directory, repeatable: candidates (OBD: 'bts' or 'random')")
        ],
        behavior: Annotated[
            list[Path] | None,
            typer.Option(
                help="behavior-model artifact, repeatable, or a directory of them (ensemble members): drives the "
                "model-based estimators and DM/DR (default: fit one on the logs)"
            ),
        ] = None,
        estimand: Annotated[
            Estimand, typer.Option(help="return: per user-day (default); step: the one-step (per-decision) value")
        ] = Estimand.ret,
        estimators: Annotated[
            str | None,
            typer.Option(help=f"comma-separated, from {','.join(ALL_ESTIMATORS)} (default: the estimand's)"),
        ] = None,
        select_by: Annotated[
            str | None, typer.Option(help="estimator that ranks the candidates (default: the first one run)")
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
        force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
        stream: Annotated[
            bool | None,
            typer.Option(
                "--stream/--no-stream",
                help=f"read the log in one streamed pass (default: when it has over {STREAM_ROWS:,} decisions)",
            ),
        ] = None,
        max_starts: Annotated[
            int | None,
            typer.Option(min=2, help="logged starts the model-based estimate rolls out from (streamed: 100,000)"),
        ] = None,
        sample_episodes: Annotated[
            int, typer.Option(min=1, help="streamed: episodes the row-level estimators (wdr, fqe, magic, ...) see")
        ] = 20_000,
        engine: Annotated[
            str, typer.Option(help="local, or ray: scan each parquet file on a Ray cluster (pip install 'adrl\\[ray]')")
        ] = "local",
        address: Annotated[
            str | None, typer.Option(help="with --engine ray: the cluster's address, e.g. ray://head:10001")
        ] = None,
    ) -> None:
        """Estimate candidate policies' return per user-day from logged decisions, rank them, say which to ship.

        Example: adrl ope --logs runs/logs.parquet --behavior runs/members --policy runs/A/policy --policy runs/B/policy

        One-step value: adrl ope --logs runs/logs.parquet --policy runs/A/policy --estimand step

        Open Bandit Dataset: adrl ope --format obd --logs ../shared/data/obd --campaign all --policy bts
        """
        with cli_errors(sigterm=True):
            if out is not None:
                check_output(out, kind="file", force=force)
            if log_format is LogFormat.obd:
                if len(policy) != 1:
                    raise ConfigError(f"with --format obd give one --policy, got {len(policy)}")
                names = parse_estimators(estimators or ",".join(OBD_ESTIMATORS))
                result = run_obd(
                    logs, policy[0], names, campaign=campaign, logging_policy=logging_policy, seed=seed,
                    n_boot=n_boot, alpha=alpha, n_folds=folds, n_sim=n_sim,
                )  # fmt: skip
            else:
                names = parse_estimators(estimators or ",".join(ESTIMAND_DEFAULTS[estimand.value]))
                result = run_adrl(
                    logs, policy, behavior or [], names, estimand=estimand.value, seed=seed, n_boot=n_boot,
                    alpha=alpha, n_folds=folds, select_by=select_by, stream=stream, max_starts=max_starts,
                    sample_episodes=sample_episodes, engine=engine, address=address,
                )  # fmt: skip
            if out is not None:
                with atomic_open(out, "w") as f:
                    json.dump(result, f, indent=2)
            if json_out:
                console.print_json(json.dumps(result))
            else:
                print_results(result)


__all__ = ["SCOPE", "OPEResult", "register"]
