"""Quality of the behavior model on ~1,000,000 synthetic impressions of the default scenario; prints JSON.

Goals (issue 3): validation click AUC within 0.01 of the true probabilities' AUC, click ECE < 0.01, log loss better
than logistic regression; conversion and leave heads better than the baselines.

Besides the truth, it reports an *observable oracle*: the ground-truth formulas evaluated at the best guess of the
hidden state from what the observation shows: interest shrunk from the noisy signal, and fatigue, which the per-slot
exposure features determine exactly (``fatigue_sens_seg · Σ_s annoyance_s · (exposure_s + wearout · repeat_s)``).
What the truth has beyond it is the hidden interest, which a model of the logged features sees only through the
signal (and, a little, through today's clicks), so the oracle is a practical ceiling for any such model and
``truth - observable_oracle`` the part of the gap that logged features cannot close.

    .venv/bin/python benchmarks/behavior_quality.py [--users 103000] [--seed 0] [--logs FILE] [--out DIR]
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
    exp_cols = [layout.index(f"exposure_{s.name}") for s in scenario.slots]
    rep_cols = [layout.index(f"repeat_exposure_{s.name}") for s in scenario.slots]
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
        exposure = (obs[:, exp_cols] + dyn.wearout * obs[:, rep_cols]).astype(np.float64) @ w.annoyance
        fatigue = w.fatigue_sens[seg] * exposure * w.decay_per_hour**hours
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=103_000, help="user-days to simulate (103,000 give 1.0M impressions)")
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
        if args.out is not None:
            report.model.save(args.out)
    metrics = {h: {s: m.as_dict() for s, m in by.items()} for h, by in report.metrics.items()}
    for by_source in metrics.values():
        for m in by_source.values():
            m.pop("calibration_by_hour")
    click = report.metrics["click"]
    checks: dict[str, bool] = {
        "at_least_1M_impressions": n_impressions is None or n_impressions >= 1_000_000,
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
            "gap_beyond_the_observation": click["truth"].auc - oracle["auc"],
        },
        "observable_oracle_click": oracle,
        "checks": checks,
        "notes": report.notes,
        "metrics": metrics,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
