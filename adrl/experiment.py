"""The readout of an A/B experiment from the server's log, with the user as the unit of randomisation.

Per arm, from per-user sums (reward, user-days = distinct episodes, impressions, clicks, conversions, leaves):

* return per user-day, CTR (clicks / impressions), conversions per user-day and churn (leaves / user-days): ratio
  metrics, each with a delta-method standard error over users (Var(Ȳ/X̄) ≈ (σ²_Y − 2R σ_XY + R² σ²_X) / (n X̄²));
* absolute lift (treatment − control) and relative lift (treatment / control − 1, delta method), normal 95% CIs;
* a sample-ratio-mismatch check: Pearson chi-square of users per arm against the split the server served
  (``DIR/experiment.jsonl``), flagged below p = 0.001;
* CUPED (regression adjustment) of each linearised ratio metric on covariates fixed before the arms act: each
  user's reward, clicks, conversions, impressions and leaves per user-day in ``--pre-logs`` (the same users before
  the experiment; users absent from it get the pre-period mean and a ``pre_absent`` indicator), and the segment
  (one-hot) and signals the client sent on the user's first logged decision. θ is pooled within arms (least squares
  on arm-centred x and y, so the treatment effect cannot leak into it); the se divides the residuals' sum of
  squares by n − k − 1 per arm (k covariates); the output gives the within-arm R² and the covariates used;
* an always-valid sequential test of the return lift: the normal-mixture mSPRT (Johari et al. 2017) with mixing
  scale τ; ``Λ ≥ 1/α`` rejects, at any look, with false-positive rate ≤ α however often one peeks;
* guardrails: churn flagged when its lift CI lies wholly above 0 (more users quitting);
* beside it, OPE: each arm's value estimated from every other arm's traffic (SNIPS per decision, WIS per user-day),
  when the arms' policy artifacts are still where the server loaded them.

Statistics come from scipy (``scipy.stats``: chi-square and normal distributions); the estimators are the closed
forms above, so each number can be checked by hand. statsmodels would add nothing these few formulas need.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from adrl.errors import DataError
from adrl.logs import read_logs

SRM_ALPHA = 0.001
PER_USER = ("reward", "user_days", "impressions", "clicks", "conversions", "leaves")
# metric: (numerator, denominator) of per-user sums
METRICS = {
    "return_per_user_day": ("reward", "user_days"),
    "ctr": ("clicks", "impressions"),
    "conversions_per_user_day": ("conversions", "user_days"),
    "churn": ("leaves", "user_days"),
}
USER_COLUMNS = ["user_id", "episode_id", "reward", "shown", "click", "conversion", "leave"]
PRE_METRICS = ("reward", "clicks", "conversions", "impressions", "leaves")  # CUPED: pre-period, per user-day
SEGMENT_COLUMN, SIGNAL_PREFIX = "x_segment", "x_signal_"  # CUPED: the user fields of the first decision


@dataclass(frozen=True)
class Ratio:
    """A ratio metric over users: estimate and delta-method standard error."""

    value: float
    se: float
    n: int


def ratio(y: np.ndarray, x: np.ndarray) -> Ratio:
    n = int(y.size)
    if n < 2 or x.sum() <= 0:
        return Ratio(math.nan, math.nan, n)
    mx, my = x.mean(), y.mean()
    r = my / mx
    cov = np.cov(y, x, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * mx * mx)
    return Ratio(float(r), float(math.sqrt(max(var, 0.0))), n)


def linearised(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-user values whose mean is the ratio's first-order expansion: R + (y − R x) / x̄."""
    r = y.mean() / x.mean()
    return np.asarray(r + (y - r * x) / x.mean())


def lift(control: Ratio, treatment: Ratio, z: float) -> dict[str, Any]:
    diff = treatment.value - control.value
    se = math.hypot(control.se, treatment.se)
    c, t = control.value, treatment.value
    rel = t / c - 1 if c else math.nan
    rel_se = math.sqrt(treatment.se**2 / c**2 + t**2 * control.se**2 / c**4) if c else math.nan
    return {
        "absolute": diff,
        "absolute_se": se,
        "absolute_ci": [diff - z * se, diff + z * se],
        "relative": rel,
        "relative_se": rel_se,
        "relative_ci": [rel - z * rel_se, rel + z * rel_se],
        "p_value": float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else math.nan,
    }


def msprt(diff: float, var: float, tau: float) -> float:
    """The normal-mixture mSPRT statistic Λ for an estimated difference with variance ``var`` (mixture N(0, τ²)):
    Λ = sqrt(V / (V + τ²)) · exp(Δ² τ² / (2 V (V + τ²))). Under no difference E[Λ] = 1 (a martingale in n)."""
    if not (var > 0 and tau > 0):
        return math.nan
    t2 = tau * tau
    return float(math.sqrt(var / (var + t2)) * math.exp(diff * diff * t2 / (2 * var * (var + t2))))


def srm(counts: Sequence[int], split: Sequence[float]) -> dict[str, Any]:
    """Chi-square test of users per arm against the expected split (percent)."""
    counts_a = np.asarray(counts, dtype=np.float64)
    expected = np.asarray(split, dtype=np.float64) / 100.0 * counts_a.sum()
    keep = expected > 0
    if keep.sum() < 2 or counts_a.sum() == 0:
        return {"chi2": math.nan, "p_value": math.nan, "flag": False}
    if (counts_a[~keep] > 0).any():  # users in an arm the split gives no traffic to
        return {"chi2": math.inf, "p_value": 0.0, "flag": True}
    chi2, p = stats.chisquare(counts_a[keep], expected[keep])
    return {"chi2": float(chi2), "p_value": float(p), "flag": bool(p < SRM_ALPHA)}


def per_user(df: pd.DataFrame) -> pd.DataFrame:
    """Per-user sums of a log with an ``arm`` column; users seen in several arms (a ramp moved them) are dropped."""
    days = df.groupby("user_id")["episode_id"].nunique().rename("user_days")
    g = df.groupby("user_id")
    out = pd.DataFrame(
        {
            "reward": g["reward"].sum(),
            "impressions": g["shown"].sum(),
            "clicks": g["click"].sum(),
            "conversions": g["conversion"].sum(),
            "leaves": df[df["leave"]].groupby("user_id")["episode_id"].nunique(),
            "arm": g["arm"].first(),
            "n_arms": g["arm"].nunique(),
        }
    ).join(days)
    out["leaves"] = out["leaves"].fillna(0)
    return out


@dataclass(frozen=True)
class ReadoutOptions:
    control: str | None = None
    split: tuple[float, ...] | None = None
    alpha: float = 0.05
    tau: float | None = None  # mSPRT mixture scale; default: 10% of the control's return per user-day


def readout(
    df: pd.DataFrame,
    *,
    split: Sequence[float] | None = None,
    arms: Sequence[str] | None = None,
    pre: pd.DataFrame | None = None,
    options: ReadoutOptions | None = None,
    source: str = "logs",
) -> dict[str, Any]:
    """The readout of an experiment log DataFrame (see the module docstring); ``arms`` orders the arms (default:
    sorted), ``split`` is the expected percent per arm (default: equal)."""
    opts = options or ReadoutOptions()
    if "arm" not in df.columns:
        raise DataError(
            f"{source}: the log has no 'arm' column; it was not written by an experiment "
            "(adrl serve --policy A --policy B --split 50,50)"
        )
    df = df[df["user_id"] != -1]
    if df.empty:
        raise DataError(f"{source}: no decisions with a user id; the readout's unit is the user")
    users = per_user(df)
    moved = int((users["n_arms"] > 1).sum())
    users = users[users["n_arms"] == 1]
    names = list(arms) if arms is not None else sorted(users["arm"].unique())
    unknown = sorted(set(users["arm"]) - set(names))
    if unknown:
        raise DataError(f"{source}: the log holds arm(s) {unknown} beyond the experiment's {names}")
    control = opts.control if opts.control is not None else names[0]
    if control not in names:
        raise DataError(f"unknown arm {control!r} for --control; the experiment's arms are {names}")
    if len(names) < 2:
        raise DataError(f"{source}: one arm ({names}) in the log; a readout compares at least two")
    split = list(split) if split is not None else [100.0 / len(names)] * len(names)
    z = float(stats.norm.ppf(1 - opts.alpha / 2))
    by_arm = {a: users[users["arm"] == a] for a in names}
    counts = [len(by_arm[a]) for a in names]
    out: dict[str, Any] = {
        "unit": "user",
        "control": control,
        "alpha": opts.alpha,
        "users": dict(zip(names, counts, strict=True)),
        "users_in_several_arms": moved,
        "srm": {**srm(counts, split), "expected_split": split, "alpha": SRM_ALPHA},
        "arms": {},
        "lift": {},
    }
    ratios: dict[str, dict[str, Ratio]] = {}
    for a in names:
        u = by_arm[a]
        ratios[a] = {m: ratio(u[y].to_numpy(np.float64), u[x].to_numpy(np.float64)) for m, (y, x) in METRICS.items()}
        out["arms"][a] = {
            m: {"value": r.value, "se": r.se, "ci": [r.value - z * r.se, r.value + z * r.se]}
            for m, r in ratios[a].items()
        }
        out["arms"][a]["user_days"] = int(u["user_days"].sum())
    tau = opts.tau
    if tau is None:
        tau = 0.1 * abs(ratios[control]["return_per_user_day"].value) or 1.0
    cuped = _cuped(by_arm, pre, user_fields(df), names) if pre is not None else None
    for a in names:
        if a == control:
            continue
        lifts: dict[str, dict[str, Any]] = {m: lift(ratios[control][m], ratios[a][m], z) for m in METRICS}
        main = lifts["return_per_user_day"]
        lam = msprt(main["absolute"], main["absolute_se"] ** 2, tau)
        entry: dict[str, Any] = {
            **lifts,
            "sequential": {
                "test": "mSPRT (normal mixture)",
                "tau": tau,
                "lambda": lam,
                "always_valid_p": min(1.0, 1.0 / lam) if lam == lam and lam > 0 else math.nan,
                "reject": bool(lam >= 1.0 / opts.alpha),
            },
            "guardrails": {"churn_up": bool(lifts["churn"]["absolute_ci"][0] > 0)},
        }
        if cuped is not None:
            entry["cuped"] = {
                "covariates": "pre-period reward, clicks, conversions, impressions, leaves per user-day (absent "
                "users: the mean, and pre_absent); segment one-hot and signals of the user's first decision",
                "columns": cuped.columns,
                "n_covariates": len(cuped.columns),
                "theta": "pooled within arms (least squares on arm-centred x and y)",
            }
            if cuped.skipped is not None:
                entry["cuped"]["skipped"] = cuped.skipped
            for m, arms_m in cuped.arms.items():
                (mc, sc), (mt, st) = arms_m[control], arms_m[a]
                diff, se = mt - mc, math.hypot(sc, st)
                plain = lifts[m]["absolute_se"]
                entry["cuped"][m] = {
                    "absolute": diff,
                    "absolute_se": se,
                    "absolute_ci": [diff - z * se, diff + z * se],
                    "width_ratio": se / plain if plain > 0 else math.nan,
                    "r2": cuped.r2[m],
                }
        out["lift"][a] = entry
    return out


def user_fields(df: pd.DataFrame) -> pd.DataFrame:
    """Each user's fields on their first logged decision: the segment (one-hot, the lowest level left out) and the
    signals (``x_segment``, ``x_signal_*``). They are what the client says about the user before an arm acts, so
    the arms cannot move them; empty (no columns) when the log has no such columns."""
    signals = sorted(c for c in df.columns if c.startswith(SIGNAL_PREFIX))
    cols = ([SEGMENT_COLUMN] if SEGMENT_COLUMN in df.columns else []) + signals
    if not cols:
        return pd.DataFrame(index=pd.Index(df["user_id"].unique(), name="user_id"))
    first = df.groupby("user_id")[cols].first()
    out = first[signals].astype(np.float64).rename(columns=lambda c: c.removeprefix("x_"))
    if SEGMENT_COLUMN in cols:
        seg = first[SEGMENT_COLUMN].round().astype(np.int64)
        for level in sorted(seg.unique())[1:]:
            out[f"segment_{level}"] = (seg == level).astype(np.float64)
    return out


def covariates(
    by_arm: dict[str, pd.DataFrame], pre: pd.DataFrame, fields: pd.DataFrame, names: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per arm, the (users × k) covariate matrix of its users, and the column names: the pre-period per-user-day
    metrics (users absent from the pre-period get the pre-period mean and ``pre_absent`` = 1) and the user fields.
    Columns that are constant over the experiment's users (e.g. ``pre_absent`` when everyone was there) are left
    out: they explain nothing and would cost a degree of freedom."""
    pre = pre[pre["user_id"] != -1]
    if pre.empty:
        raise DataError(
            "the pre-period log (--pre-logs) has no decisions with a user id; CUPED's covariates are per user"
        )
    pre_u = per_user(pre.assign(arm="pre"))
    covs = pre_u[list(PRE_METRICS)].div(pre_u["user_days"], axis=0).add_prefix("pre_")
    fill = covs.mean()
    frames = {}
    for a in names:
        idx = by_arm[a].index
        c = covs.reindex(idx)
        absent = c.isna().any(axis=1).astype(np.float64).rename("pre_absent")
        frames[a] = pd.concat([c.fillna(fill), absent, fields.reindex(idx)], axis=1)
    allx = pd.concat([frames[a] for a in names])
    allx = allx.fillna(allx.mean())  # a user without fields (no x_ columns on their rows): the mean, no signal
    keep = [c for c in allx.columns if allx[c].nunique() > 1]
    sizes = np.cumsum([0] + [len(frames[a]) for a in names])
    mat = allx[keep].to_numpy(np.float64)
    return {a: mat[sizes[i] : sizes[i + 1]] for i, a in enumerate(names)}, keep


@dataclass(frozen=True)
class Cuped:
    """CUPED per metric and arm: the adjusted (mean, se); per metric the within-arm R²; the covariates used."""

    arms: dict[str, dict[str, tuple[float, float]]]
    r2: dict[str, float]
    columns: list[str]
    skipped: str | None = None


@dataclass(frozen=True)
class CupedFit:
    """One metric's CUPED: the adjusted (mean, se) per arm, the within-arm R² and θ."""

    arms: dict[str, tuple[float, float]]
    r2: float
    theta: np.ndarray


def cuped_fit(lin: dict[str, np.ndarray], x: dict[str, np.ndarray]) -> CupedFit:
    """CUPED (regression adjustment) of per-user values ``lin[arm]`` on covariates ``x[arm]`` (users × k).

    θ is the pooled-within-arm least-squares fit (x and y centred by arm before the solve), so a difference between
    the arms' means cannot leak into θ; every arm is then adjusted with the same θ to the pooled covariate mean,
    ``ȳ_a − (x̄_a − x̄) θ``, which keeps each arm's mean unbiased (the arms' x̄ differ by chance only). The se of
    an arm's mean is its residuals' root mean square over ``n_a − rank − 1`` (the covariates' degrees of freedom)
    over sqrt(n_a)."""
    names = list(lin)
    xc = np.concatenate([x[a] - x[a].mean(axis=0) for a in names])
    yc = np.concatenate([lin[a] - lin[a].mean() for a in names])
    theta, _, rank, _ = np.linalg.lstsq(xc, yc, rcond=None)
    resid = yc - xc @ theta
    sst = float(yc @ yc)
    r2 = 1.0 - float(resid @ resid) / sst if sst > 0 else math.nan
    xbar = np.concatenate([x[a] for a in names]).mean(axis=0)
    out: dict[str, tuple[float, float]] = {}
    lo = 0
    for a in names:
        n = lin[a].size
        r = resid[lo : lo + n]
        lo += n
        mean = float(lin[a].mean() - (x[a].mean(axis=0) - xbar) @ theta)
        dof = n - int(rank) - 1
        out[a] = (mean, math.sqrt(float(r @ r) / dof / n) if dof > 0 else math.nan)
    return CupedFit(out, r2, theta)


def _cuped(by_arm: dict[str, pd.DataFrame], pre: pd.DataFrame, fields: pd.DataFrame, names: Sequence[str]) -> Cuped:
    """CUPED of every linearised ratio metric (``cuped_fit``) on ``covariates``; skipped, with the reason, when an
    arm has too few users for the covariates."""
    x, columns = covariates(by_arm, pre, fields, names)
    k = len(columns)
    small = [a for a in names if len(by_arm[a]) <= k + 1]
    if small:
        return Cuped({}, {}, columns, f"arm(s) {small} have no more users than covariates + 1 ({k + 1})")
    arms: dict[str, dict[str, tuple[float, float]]] = {}
    r2: dict[str, float] = {}
    for metric, (num, den) in METRICS.items():
        lin = {a: linearised(by_arm[a][num].to_numpy(np.float64), by_arm[a][den].to_numpy(np.float64)) for a in names}
        fit = cuped_fit(lin, x)
        arms[metric], r2[metric] = fit.arms, fit.r2
    return Cuped(arms, r2, columns)


def experiment_history(log_dir: Path) -> list[dict[str, Any]]:
    """The versions the server served (``DIR/experiment.jsonl``, or worker 0's under ``--workers N``: every worker
    applies every version), oldest first; [] if absent."""
    path = log_dir / "experiment.jsonl"
    if not path.is_file():
        path = log_dir / "worker-0" / "experiment.jsonl"
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            raise DataError(f"{path}:{i + 1}: not a JSON line; the experiment history is damaged") from None
        out.append(rec)
    return out


def ope_beside(
    df: pd.DataFrame, history: list[dict[str, Any]], names: Sequence[str], *, seed: int = 0, n_boot: int = 200
) -> dict[str, Any]:
    """Each arm's value estimated from each other arm's traffic (SNIPS per decision, WIS per user-day), with the
    arm policies of the last version (skipped, with the reason, when an artifact is not where it was served from)."""
    from adrl.features import FeatureLayout
    from adrl.ope.data import from_adrl_frame
    from adrl.ope.run import evaluate
    from adrl.policy import Exploration, load_policy

    if not history:
        return {"skipped": "no experiment history (experiment.jsonl) beside the log"}
    last = {a["name"]: a for a in history[-1]["arms"]}
    policies = {}
    for a in names:
        spec = last.get(a)
        if spec is None or not spec.get("policy") or not Path(spec["policy"]).is_dir():
            return {"skipped": f"arm {a!r}: its policy artifact is not available"}
        policies[a] = load_policy(spec["policy"], exploration=Exploration.parse(spec.get("exploration")))
    layout = FeatureLayout.from_scenario(policies[names[0]].scenario)
    out: dict[str, Any] = {}
    for target in names:
        for source in names:
            if source == target:
                continue
            part = df[df["arm"] == source]
            data = from_adrl_frame(part, layout, source=f"arm {source}")
            res = evaluate(data, policies[target].distribution, ["snips", "wis"], rng=np.random.default_rng(seed),
                           n_boot=n_boot)  # fmt: skip
            out[f"{target}_from_{source}"] = {
                k: {"value": e.value, "ci": [e.lower, e.upper]} for k, e in res.estimates.items()
            }
    return out


def report(
    logs: Path | str,
    *,
    pre_logs: Path | str | None = None,
    options: ReadoutOptions | None = None,
    ope: bool = True,
) -> dict[str, Any]:
    """``adrl experiment report``: the readout of a server log directory (and the OPE beside it)."""
    logs = Path(logs)
    df = read_logs(logs)
    if "arm" not in df.columns:
        raise DataError(
            f"{logs}: the log has no 'arm' column; it was not written by an experiment "
            "(adrl serve --policy A --policy B --split 50,50)"
        )
    df = df[df["arm"].notna()]
    history = experiment_history(logs) if logs.is_dir() else []
    opts = options or ReadoutOptions()
    names: list[str] | None = None
    split: Sequence[float] | None = opts.split
    if history:
        arms = history[-1]["arms"]
        names = [a["name"] for a in arms]
        if split is None:
            split = [float(a["split"]) for a in arms]
        elif len(split) != len(names):
            raise DataError(f"--split has {len(split)} values for the {len(names)} arms {names}")
    pre = read_logs(pre_logs, columns=USER_COLUMNS) if pre_logs is not None else None
    out = readout(df, split=split, arms=names, pre=pre, options=opts, source=str(logs))
    out["logs"] = str(logs)
    out["versions"] = len(history)
    if ope:
        out["ope"] = ope_beside(df, history, list(out["arms"]))
    return out
