"""Accuracy and interval coverage of the off-policy estimators against the ground-truth world (prints JSON).

Logs come from an ε-greedy logging policy around the myopic greedy rule in the default scenario, simulated in memory
with :class:`adrl.world.World` (same dynamics and draws as ``adrl simulate --epsilon ...``, no parquet). Each action
component explores on its own. The default rates (delay 1.0, slot 0.8, creative 0.6) come from
``benchmarks/ope_logger_design.py``, which computes in closed form the decisions each target needs for 5 %: with
them every target needs at most about 0.83M (the grid's best, 1,0.9,0.6, needs 0.77M; 1,0.5,0.3 needs 2.9M for the
REINFORCE agent). The greedy rule never delays, so timing is randomised fully for pacing, and the trained agents
spread over slots and creatives that a lighter exploration rarely logs (``--epsilon 0.3`` gives pacing an effective
sample size of about 1 % and the REINFORCE agent 0.6 %).

Truth:

- per-decision value (the contextual-bandit estimand V = E_{x ~ logged contexts}[Σ_a π_e(a|x) E[r | x, a]]): while
  the logging policy is simulated, every decision also gets the exact expected immediate reward of the target's
  action distribution on the user's TRUE hidden state: World.probabilities / World.expected_reward for every
  action (zero where the delay runs past the day, as nothing is shown), weighted by π_e(a|x). The mean over a
  draw's decisions is that draw's conditional truth; the population value (what the bootstrap interval targets)
  is the mean of the conditional truths over all draws.
- whole-episode value: the on-policy mean return of π_e, simulated on fresh users.

Targets: greedy (the logger's own base rule), pacing (min gap 3 h), and a trained agent given with ``--policy DIR``;
without one, a stochastic stand-in (10 % uniform mixed into pacing) is used and named as such in the output.

Usage: python benchmarks/ope_accuracy.py [--draws 50] [--n-users 250000] [--policy runs/A/policy] [--seed 0]
(the defaults simulate about 2.0M decisions per draw; 50 draws take about 45 minutes on 2 cores and 10 GB of memory;
--n-users 20000 runs in about 5 minutes at 160k decisions per draw)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from adrl.actions import flat_index
from adrl.agents.baselines import EpsilonGreedyPolicy, GreedyPolicy, PacingPolicy
from adrl.agents.registry import load_policy_artifact
from adrl.features import FeatureLayout
from adrl.ope.bandit import DM, DR, IPS, SNDR, SNIPS, SwitchDR, estimate_all
from adrl.ope.data import LoggedData, adrl_action_features, adrl_categorical, overrun_mask
from adrl.ope.reward_models import cross_fit, default_reward_model
from adrl.ope.run import evaluate, model_terms
from adrl.scenario import Scenario
from adrl.simulate import logged_actions, make_logging_policy, parse_epsilon
from adrl.truth import check_truth, true_action_values
from adrl.world import World

BANDIT = (DM(), IPS(), SNIPS(), DR(), SNDR(), SwitchDR())


def simulate_logs(
    world: World,
    layout: FeatureLayout,
    targets: dict[str, Any],
    n_users: int,
    rng: np.random.Generator,
    epsilon: tuple[float, float, float],
) -> tuple[LoggedData, dict[str, float]]:
    """ε-greedy logs of ``n_users`` user-days and, per target, the mean true expected reward over its decisions."""
    sc = world.scenario
    logger = make_logging_policy("epsilon-greedy", sc, epsilon=epsilon)
    batch = world.sample_users(n_users, rng)
    active = np.arange(n_users)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "prop", "reward", "episode", "step")}
    truth_sum = dict.fromkeys(targets, 0.0)
    step = 0
    while active.size:
        sub = batch.take(active)
        obs = layout.encode(sub)
        action, prop, _ = logged_actions(logger, obs, rng)
        q_true = true_action_values(world, sub)
        if step < 3:
            check_truth(world, sub, rng)
        for name, policy in targets.items():
            truth_sum[name] += float(np.einsum("na,na->", policy.action_probabilities(obs), q_true))
        res = world.step(sub, action, rng)
        batch.assign(active, sub)
        for k, v in zip(parts, (obs, flat_index(action, sc.action_nvec), prop, res.reward, active,
                                np.full(active.size, step)), strict=True):  # fmt: skip
            parts[k].append(v)
        active = active[~(res.terminated | res.truncated)]
        step += 1
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    n = cat["reward"].shape[0]
    data = LoggedData(
        obs=cat["obs"], action=cat["action"], propensity=cat["prop"], reward=cat["reward"],
        episode_id=cat["episode"], step=cat["step"], n_actions=sc.n_actions, categorical=adrl_categorical(layout),
        action_features=adrl_action_features(layout), zero_reward=overrun_mask(layout), source="simulated",
    )  # fmt: skip
    return data, {k: v / n for k, v in truth_sum.items()}


def on_policy_return(world: World, layout: FeatureLayout, policy: Any, n_users: int, rng: np.random.Generator) -> float:
    """Mean return per user-day of ``policy`` (sampled from its exact action probabilities)."""
    from adrl.agents.baselines import sample_actions

    batch = world.sample_users(n_users, rng)
    active = np.arange(n_users)
    total = 0.0
    while active.size:
        sub = batch.take(active)
        action, _ = sample_actions(policy, layout.encode(sub), rng)
        res = world.step(sub, action, rng)
        batch.assign(active, sub)
        total += float(res.reward.sum())
        active = active[~(res.terminated | res.truncated)]
    return total / n_users


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=50, help="independent log draws (coverage is over these)")
    ap.add_argument("--n-users", type=int, default=250_000, help="user-days per draw (about 8 decisions each)")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per estimate")
    ap.add_argument("--policy", type=Path, action="append", default=[], help="trained agent artifact(s) to add")
    ap.add_argument("--episode-draws", type=int, default=2, help="draws on which whole-episode estimators run")
    ap.add_argument("--truth-users", type=int, default=50_000, help="user-days for on-policy returns")
    ap.add_argument("--epsilon", default="1,0.8,0.6", help="logger's exploration: one rate or 'delay,slot,creative'")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    epsilon = parse_epsilon(args.epsilon)

    sc = Scenario()
    world = World(sc)
    layout = FeatureLayout.from_scenario(sc)
    pacing = PacingPolicy(sc, 3)
    targets: dict[str, Any] = {"greedy": GreedyPolicy(sc), "pacing": pacing}
    notes: dict[str, str] = {
        "greedy": "myopic greedy (the logging policy's base rule)",
        "pacing": "pacing, min gap 3 h",
    }
    for p in args.policy:
        targets[f"agent:{p}"] = load_policy_artifact(p, expect_layout=layout)
        notes[f"agent:{p}"] = f"trained agent artifact {p} ({targets[f'agent:{p}'].kind})"
    if not args.policy:
        targets["stand-in"] = EpsilonGreedyPolicy(pacing, 0.1)
        notes["stand-in"] = "NO TRAINED AGENT GIVEN: stochastic stand-in = 0.9 pacing + 0.1 uniform (pass --policy)"

    streams = np.random.SeedSequence(args.seed).spawn(args.draws + len(targets))
    start = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    episode_rows: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    n_decisions = []
    for d in range(args.draws):
        rng = np.random.default_rng(streams[d])
        data, truth = simulate_logs(world, layout, targets, args.n_users, rng, epsilon)
        n_decisions.append(data.n)
        folds = cross_fit(default_reward_model(data), data.obs, data.action, data.reward, n_folds=2, rng=rng,
                          groups=data.episode_id)  # fmt: skip
        for name, policy in targets.items():
            probs = policy.action_probabilities
            tp = np.empty(data.n)
            for lo in range(0, data.n, 65_536):
                o = data.obs[lo : lo + 65_536]
                tp[lo : lo + o.shape[0]] = probs(o)[np.arange(o.shape[0]), data.action[lo : lo + o.shape[0]]]
            ql, qt = model_terms(data, probs, folds)
            est = estimate_all(
                list(BANDIT),
                data.reward,
                data.propensity,
                tp,
                ql,
                qt,
                rng=rng,
                n_boot=args.n_boot,
                groups=data.episode_id,
            )
            rows[name].append({"truth": truth[name], **{k: e for k, e in est.items()}})
            if d < args.episode_draws:
                res = evaluate(data, probs, ("pdis", "wis", "wdr", "fqe"), rng=rng, n_boot=args.n_boot)
                episode_rows[name].append(dict(res.estimates))
        print(f"draw {d + 1}/{args.draws}: {data.n:,} decisions, {time.perf_counter() - start:.0f}s", flush=True)

    report: dict[str, Any] = {
        "scenario": "default",
        "logging_policy": "epsilon-greedy around greedy, per-component epsilon (delay, slot, creative) = "
        f"{list(epsilon)}",
        "draws": args.draws,
        "n_users_per_draw": args.n_users,
        "mean_decisions_per_draw": float(np.mean(n_decisions)),
        "n_boot": args.n_boot,
        "interval": "BCa bootstrap over whole user-days (per-decision estimators)",
        "targets": {},
    }
    for t_i, (name, policy) in enumerate(targets.items()):
        draws = rows[name]
        cond = np.array([r["truth"] for r in draws])
        population = float(cond.mean())
        per: dict[str, Any] = {}
        for e in BANDIT:
            vals = np.array([r[e.name].value for r in draws])
            rel = np.abs(vals - cond) / abs(population)
            cover_pop = np.mean([r[e.name].covers(population) for r in draws])
            cover_cond = np.mean([r[e.name].covers(t) for r, t in zip(draws, cond, strict=True)])
            per[e.name] = {
                "mean_estimate": float(vals.mean()),
                "bias_rel": float((vals.mean() - population) / abs(population)),
                "mean_abs_rel_error": float(rel.mean()),
                "median_abs_rel_error": float(np.median(rel)),
                "rel_error_of_mean_over_draws": float(abs(vals.mean() - population) / abs(population)),
                "coverage_population_truth": float(cover_pop),
                "coverage_draw_truth": float(cover_cond),
                "mean_ci_halfwidth_rel": float(
                    np.mean([(r[e.name].upper - r[e.name].lower) / 2 for r in draws]) / abs(population)
                ),
                "mean_ess": float(np.nanmean([r[e.name].ess for r in draws])) if e.name != "dm" else None,
            }
        ep_truth = on_policy_return(world, layout, policy, args.truth_users,
                                    np.random.default_rng(streams[args.draws + t_i]))  # fmt: skip
        episode: dict[str, Any] = {"true_mean_return": ep_truth}
        for k in ("pdis", "wis", "wdr", "fqe"):
            ep_vals = [r[k] for r in episode_rows[name]]
            if ep_vals:
                episode[k] = {
                    "estimates": [round(v.value, 5) for v in ep_vals],
                    "mean_abs_rel_error": float(np.mean([abs(v.value - ep_truth) / abs(ep_truth) for v in ep_vals])),
                    "covered": [bool(v.covers(ep_truth)) for v in ep_vals],
                    "ess": [None if math.isnan(v.ess) else round(v.ess, 1) for v in ep_vals],
                }
        # the error falls as 1/sqrt(n) once the weights' tail is sampled: the log size DR would need for 5 %
        dr_err = per["dr"]["mean_abs_rel_error"]
        report["targets"][name] = {
            "policy": notes[name],
            "per_decision_true_value": population,
            "dr_meets_5pct": dr_err < 0.05 and per["sndr"]["mean_abs_rel_error"] < 0.05,
            "coverage_ge_90pct_ips_snips_dr": all(
                per[k]["coverage_population_truth"] >= 0.9 for k in ("ips", "snips", "dr")
            ),
            "decisions_per_draw_for_5pct_dr_projected": round(float(np.mean(n_decisions)) * (dr_err / 0.05) ** 2),
            "truth_sd_over_draws": float(cond.std(ddof=1)) if cond.size > 1 else None,
            # where the misses fall: each draw's conditional truth and (estimate, lower, upper) per estimator
            "per_draw": {
                "truth": [round(float(t), 6) for t in cond],
                **{
                    k: [[round(r[k].value, 6), round(r[k].lower, 6), round(r[k].upper, 6)] for r in draws]
                    for k in ("ips", "snips", "dr")
                },
                "dr_max_weight": [round(r["dr"].max_weight, 1) for r in draws],
            },
            "per_decision": per,
            "whole_episode": episode,
        }
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
