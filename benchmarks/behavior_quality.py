"""Quality of the behavior model on ~1,000,000 synthetic impressions of the default scenario; prints JSON.

Goals (issue 3): validation click AUC within 0.01 of the true probabilities' AUC, click ECE < 0.01, log loss better
than logistic regression; conversion and leave heads better than the baselines.

Besides the truth, it reports an *observable oracle*: the ground-truth formulas evaluated at the best guess of the
hidden state from what the observation shows (interest shrunk from the noisy signal, fatigue rebuilt from impression
counts, as ``WorldValueModel`` does). The truth also sees the hidden interest and exact fatigue, which no model of
the observation can, so the oracle is a practical ceiling for any model of the logged features.
``information_ceiling`` repeats the comparison on fresh simulated user-days where the hidden state is at hand, adding
an oracle that knows the exact fatigue: the gap left between it and the truth is what the hidden interest alone is
worth, which no model of the logged features can close.

    .venv/bin/python benchmarks/behavior_quality.py [--users 96000] [--seed 0] [--logs FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from adrl.agents.baselines import WorldValueModel
from adrl.behavior import FitConfig, fit_adrl
from adrl.behavior.metrics import head_metrics
from adrl.behavior.training import unit_hash
from adrl.features import FeatureLayout
from adrl.logs import feature_columns, iter_batches
from adrl.scenario import HOURS_PER_DAY, Scenario
from adrl.simulate import simulate


def observable_oracle(scenario: Scenario, logs: Path, validation_fraction: float) -> dict[str, Any]:
    """Click metrics of the true model at E[hidden state | observation] on the validation impressions."""
    layout = FeatureLayout.from_scenario(scenario)
    vm = WorldValueModel(scenario)
    w, dyn = vm.world, vm.world.dyn
    feats = feature_columns(layout)
    sig = [layout.index(f"signal_{c}") for c in scenario.categories]
    ys, ps = [], []
    cols = [*feats, "user_id", "delay", "slot", "creative", "shown", "click"]
    for df in iter_batches(logs, columns=cols):
        df = df[df["shown"].to_numpy() & (unit_hash(df["user_id"].to_numpy()) < validation_fraction)]
        obs = df[feats].to_numpy(dtype=np.float32)
        d, s, c = (df[k].to_numpy(dtype=np.int64) for k in ("delay", "slot", "creative"))
        seg = obs[:, 0].astype(np.int64)
        mean = w.interest_mean[seg]
        interest = mean + vm.shrink[seg, None] * (obs[:, sig] - mean)
        aff = np.einsum("nk,nk->n", interest, w.latents[c])
        hours = w.delays[d]
        hour = (obs[:, layout.index("hour")].astype(np.int64) + hours) % HOURS_PER_DAY
        fatigue = vm.fatigue_estimate(obs) * w.decay_per_hour**hours
        logit = (
            dyn.base_click_logit
            + dyn.affinity_weight * aff
            + dyn.quality_weight * w.quality[c]
            + w.log_attention[s]
            + w.log_activity[seg, hour]
            - dyn.fatigue_weight * fatigue
        )
        ys.append(df["click"].to_numpy())
        ps.append(1.0 / (1.0 + np.exp(-logit)))
    m = head_metrics(np.concatenate(ys), np.concatenate(ps))
    return {"auc": m.auc, "log_loss": m.log_loss, "ece": m.ece, "calibration": m.calibration}


def information_ceiling(scenario: Scenario, n_users: int, seed: int) -> dict[str, Any]:
    """Click AUC of the truth and of two oracles on fresh ε-greedy user-days simulated here (hidden state in hand).

    ``observable_oracle``: as above. ``exact_fatigue_oracle``: the same, but with the user's exact hidden fatigue
    (the only hidden quantity the logged history determines in full; a model of the observation can at best rebuild
    it). What stays between it and the truth is the hidden interest beyond its noisy signal.
    """
    from adrl.simulate import make_logging_policy
    from adrl.world import World

    world, layout, vm = World(scenario), FeatureLayout.from_scenario(scenario), WorldValueModel(scenario)
    dyn = world.dyn
    logger = make_logging_policy("epsilon-greedy", scenario)
    sig = [layout.index(f"signal_{c}") for c in scenario.categories]
    rng = np.random.default_rng(seed)
    batch = world.sample_users(n_users, rng)
    active = np.arange(n_users)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("click", "truth", "observable", "exact_fatigue")}
    while active.size:
        sub = batch.take(active)
        obs = layout.encode(sub)
        action = logger.predict(obs)
        d, s, c = action[:, 0], action[:, 1], action[:, 2]
        seg = sub.segment
        mean = world.interest_mean[seg]
        interest = mean + vm.shrink[seg, None] * (obs[:, sig] - mean)
        decay = world.decay_per_hour ** world.delays[d]
        known = (
            dyn.base_click_logit
            + dyn.affinity_weight * np.einsum("nk,nk->n", interest, world.latents[c])
            + dyn.quality_weight * world.quality[c]
            + world.log_attention[s]
            + world.log_activity[seg, world.hour_of_epoch[sub.epoch + world.delays[d]]]
        )
        p_obs = 1.0 / (1.0 + np.exp(-(known - dyn.fatigue_weight * vm.fatigue_estimate(obs) * decay)))
        p_fat = 1.0 / (1.0 + np.exp(-(known - dyn.fatigue_weight * sub.fatigue * decay)))
        res = world.step(sub, action, rng)
        batch.assign(active, sub)
        shown = res.shown
        for k, v in zip(parts, (res.click, res.response.p_click, p_obs, p_fat), strict=True):
            parts[k].append(v[shown])
        active = active[~(res.terminated | res.truncated)]
    y = np.concatenate(parts.pop("click"))
    aucs = {k: head_metrics(y, np.concatenate(v)).auc for k, v in parts.items()}
    return {
        "n_impressions": int(y.size),
        "click_auc": aucs,
        "exact_fatigue_gap_to_truth": aucs["truth"] - aucs["exact_fatigue"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=96_000, help="user-days to simulate (96,000 gives ~1.0M impressions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logs", type=Path, default=None, help="reuse this log instead of simulating")
    ap.add_argument("--out", type=Path, default=None, help="save the fitted model here")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    scenario = Scenario()
    with tempfile.TemporaryDirectory() as tmp:
        logs = args.logs or Path(tmp) / "logs.parquet"
        start = time.perf_counter()
        n_impressions = None
        if args.logs is None:
            n_impressions = simulate(
                scenario, n_users=args.users, out=logs, seed=args.seed, progress=False
            ).n_impressions
        cfg = FitConfig(epochs=args.epochs, seed=args.seed)
        report = fit_adrl(logs, scenario, cfg, progress=False)
        oracle = observable_oracle(scenario, logs, cfg.validation_fraction)
        ceiling = information_ceiling(scenario, n_users=args.users // 5, seed=args.seed + 1)
        if args.out is not None:
            report.model.save(args.out)
    metrics = {h: {s: m.as_dict() for s, m in by.items()} for h, by in report.metrics.items()}
    for by_source in metrics.values():
        for m in by_source.values():
            m.pop("calibration_by_hour")
    click = report.metrics["click"]
    checks: dict[str, bool] = {
        "click_auc_within_0.01_of_truth": click["truth"].auc - click["model"].auc <= 0.01,
        "click_ece_below_0.01": click["model"].ece < 0.01,
        "click_log_loss_below_logistic_regression": click["model"].log_loss < click["logistic_regression"].log_loss,
    }
    for head in ("conversion", "leave"):
        by = report.metrics[head]
        for base in ("logistic_regression", "random_forest"):
            checks[f"{head}_beats_{base}_auc_and_log_loss"] = (
                by["model"].auc > by[base].auc and by["model"].log_loss < by[base].log_loss
            )
    result = {
        "n_impressions": n_impressions,
        "n_train": report.n_train,
        "n_validation": report.n_validation,
        "epochs_run": len(report.history),
        "fit_seconds": report.seconds,
        "total_seconds": time.perf_counter() - start,
        "click_auc": {
            "model": click["model"].auc,
            "truth": click["truth"].auc,
            "observable_oracle": oracle["auc"],
            "logistic_regression": click["logistic_regression"].auc,
            "random_forest": click["random_forest"].auc,
            "gap_to_truth": click["truth"].auc - click["model"].auc,
            "gap_to_observable_oracle": oracle["auc"] - click["model"].auc,
        },
        "observable_oracle_click": oracle,
        "information_ceiling": ceiling,
        "checks": checks,
        "notes": report.notes,
        "metrics": metrics,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
