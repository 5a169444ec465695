"""The quickstart's ``report.html``: one self-contained page (figures embedded as PNG data URIs, no scripts)."""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adrl.evaluation import Evaluation
from adrl.io import atomic_open
from adrl.ope.run import SCOPE
from adrl.scenario import Scenario


@dataclass
class QuickstartResult:
    """Everything the main job produced; :func:`write_report` renders it and ``summary()`` is quickstart.json."""

    out: Path
    scenario: Scenario
    simulation: dict[str, Any]
    behavior_metrics: dict[str, Any]
    calibration: dict[str, list[float]]
    curves: dict[str, list[tuple[float, float]]]
    evaluations: list[Evaluation]
    ope: dict[str, dict[str, Any]]
    best: str
    best_policy: Path
    report: Path
    seconds: dict[str, float] = field(default_factory=dict)
    selected: str = ""  # the offline pick: the ship rule's (best lower bound above the logged value), else the top
    selection: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "best": self.best,
            "selected": self.selected,
            "simulation": self.simulation,
            "selection": self.selection,
            "best_policy": str(self.best_policy),
            "report": str(self.report),
            "policies": {e.name: e.overall.as_dict() for e in self.evaluations},
            "ope": self.ope,
            "seconds": self.seconds,
        }


SECTIONS = (
    ("scenario", "Scenario"),
    ("logs", "Logged data"),
    ("behavior", "Behavior model"),
    ("learning", "Learning curves"),
    ("policies", "Policy comparison on the ground truth"),
    ("ope", "Off-policy estimates of the return per user-day beside the true values, and the offline pick"),
    ("best", "What the exported policy does, by hour"),
    ("next", "Next steps"),
)

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, Segoe UI, sans-serif; margin: 0; color: #1d2433; background: #f6f7fb; }
header { background: #1d2433; color: #fff; padding: 24px 40px; }
header h1 { margin: 0 0 4px; font-size: 26px; } header p { margin: 0; color: #c9d1e4; }
nav { padding: 10px 40px; background: #e9ecf5; font-size: 14px; } nav a { margin-right: 16px; color: #31508f; }
main { padding: 8px 40px 40px; max-width: 1200px; }
section { background: #fff; border-radius: 10px; padding: 18px 24px; margin: 18px 0; box-shadow: 0 1px 3px #0001; }
h2 { margin-top: 0; font-size: 20px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e3e6ef; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f0f2f8; }
tr.best td { background: #eaf6ec; font-weight: 600; }
.cards { display: flex; gap: 14px; flex-wrap: wrap; margin: 8px 0; }
.card { background: #f0f2f8; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.card b { display: block; font-size: 22px; } .muted { color: #66708a; font-size: 13px; }
img { max-width: 100%; }
pre { background: #1d2433; color: #e6e9f2; padding: 12px 16px; border-radius: 8px; overflow-x: auto; }
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec) if isinstance(x, int | float) else html.escape(str(x))


def _table(header: list[str], rows: list[list[str]], best_row: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=best' if i == best_row else ''}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _scenario(r: QuickstartResult) -> str:
    sc = r.scenario
    cards = "".join(
        f'<div class="card"><span class="muted">{k}</span><b>{v}</b></div>'
        for k, v in (
            ("segments", sc.n_segments),
            ("creatives", f"{sc.n_creatives} in {sc.n_categories} categories"),
            ("slots", sc.n_slots),
            ("decision epochs", f"{sc.horizon} h"),
            ("delays", ", ".join(f"{d} h" for d in sc.delays)),
            ("actions", sc.n_actions),
            ("price of a lost user", f"{sc.rewards.churn_cost:g}"),
        )
    )
    seg = _table(
        ["segment", "share", "interests", "fatigue sens.", "churn sens.", "peak hours"],
        [
            [html.escape(s.name), f"{s.share:.0%}",
             html.escape(", ".join(f"{k} {v:+.1f}" for k, v in s.interest.items())),
             f"{s.fatigue_sensitivity:g}", f"{s.churn_sensitivity:g}",
             ", ".join(str(h) for h in np.argsort(s.activity)[-3:][::-1])]
            for s in sc.segments
        ],
    )  # fmt: skip
    slots = _table(
        ["slot", "attention", "annoyance", "cost"],
        [[html.escape(s.name), f"{s.attention:g}", f"{s.annoyance:g}", f"{s.cost:g}"] for s in sc.slots],
    )
    rw = sc.rewards
    reward = (
        f"<p>Reward of an ad: {rw.click_value:g} per click + {rw.conversion_weight:g} × the creative's conversion "
        f"value per conversion − the slot's cost − {rw.churn_cost:g} when the user leaves after it "
        "(<code>rewards.churn_cost</code>, the value of the days a lost user would have come back"
        + ("; 0 lets a policy burn users out for free" if not rw.churn_cost else "")
        + ").</p>"
    )
    return f'<div class="cards">{cards}</div>{reward}{seg}{slots}<p class=muted>scenario hash {sc.content_hash}</p>'


def _logs(r: QuickstartResult) -> str:
    s = r.simulation
    eps = ", ".join(f"{e:g}" for e in s.get("epsilon", (0.3, 0.3, 0.3)))
    return _table(
        ["user-days", "decisions", "impressions", "CTR", "conversions / click", "churn", "return / user-day"],
        [[f"{s['n_users']:,}", f"{s['n_decisions']:,}", f"{s['n_impressions']:,}", f"{s['ctr']:.2%}",
          f"{s['conversion_rate']:.2%}", f"{s['churn_rate']:.1%}", f"{s['mean_return']:.4f}"]],
    ) + (f"<p class=muted>Logged by an ε-greedy policy (ε = {eps} per delay, slot, creative) around the myopic "
         "targeting rule.</p>") + _loop(s.get("closed_loop"))  # fmt: skip


def _loop(loop: dict[str, Any] | None) -> str:
    if not loop:
        return ""
    return (f"<p>Closed loop: a first PPO, trained on a simulator fitted to these logs, was deployed on the "
            f"ground-truth world with ε = {loop['epsilon']:g} per component for {loop['users']:,} user-days "
            f"(return {loop['mean_return']:.4f} per user-day, churn {loop['churn_rate']:.1%}; "
            f"<code>{html.escape(loop['log'])}</code>). Its log joined this one: the behavior model, the simulator, "
            "the agents and the tuned rules below were fitted, trained and tuned on both."
            + (" The retrained PPO started from the deployed one's weights"
               + (f", kept near it by {loop['anchor']:g} · KL" if loop.get("anchor") else "") + "."
               if loop.get("warm_start") else "")
            + "</p>")  # fmt: skip


def _behavior(r: QuickstartResult) -> str:
    import matplotlib.pyplot as plt

    val = r.behavior_metrics.get("validation", {})
    rows = []
    for head, by_source in val.items():
        for source, m in by_source.items():
            rows.append([f"{html.escape(head)} · {html.escape(source.replace('_', ' '))}", _fmt(m.get("auc")),
                         _fmt(m.get("log_loss"), ".5f"), _fmt(m.get("normalized_entropy")),
                         _fmt(m.get("calibration"), ".3f"), _fmt(m.get("ece"), ".5f")])  # fmt: skip
    table = _table(["head · model", "AUC", "log loss", "norm. entropy", "pred/obs", "ECE"], rows)
    c = r.calibration
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    hi = max(max(c["predicted"], default=0.1), max(c["observed"], default=0.1)) * 1.05
    ax.plot([0, hi], [0, hi], color="#999", lw=1, ls="--", label="perfect calibration")
    ax.plot(c["predicted"], c["observed"], "o-", label="observed click rate")
    ax.plot(c["predicted"], c["true"], "s:", label="true probability")
    ax.set_xlabel("predicted click probability (bin mean)")
    ax.set_ylabel("rate in bin")
    ax.set_title(f"Click calibration on {c['n_impressions']:,} held-out impressions")
    ax.legend(fontsize=8)
    return table + _png(fig)


def _learning(r: QuickstartResult) -> str:
    import matplotlib.pyplot as plt

    learners = {k: v for k, v in r.curves.items() if v}
    if not learners:
        return "<p>No learning agent logged a curve.</p>"
    fig, axes = plt.subplots(1, len(learners), figsize=(5.5 * len(learners), 3.6), squeeze=False)
    for ax, (name, pts) in zip(axes[0], learners.items(), strict=True):
        x, y = zip(*pts, strict=True)
        ax.plot(x, y, lw=1.6)
        ax.set_title(f"{name} on the learned simulator")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("mean episode return")
        ax.grid(alpha=0.3)
    return _png(fig)


def _policies(r: QuickstartResult) -> str:
    import matplotlib.pyplot as plt

    evals = sorted(r.evaluations, key=lambda e: -e.overall.mean_return)
    rows = [
        [html.escape(e.name), f"{e.overall.mean_return:.4f}", f"[{e.overall.ci_low:.4f}, {e.overall.ci_high:.4f}]",
         f"{e.overall.ctr:.2%}", f"{e.overall.impressions_per_user:.2f}", f"{e.overall.churn_rate:.1%}",
         f"{e.overall.revenue_per_user:.4f}"]
        for e in evals
    ]  # fmt: skip
    table = _table(["policy", "mean return", "95% CI", "CTR", "ads / user-day", "churn", "revenue"], rows, 0)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    means = [e.overall.mean_return for e in evals]
    err = [[m - e.overall.ci_low for m, e in zip(means, evals, strict=True)],
           [e.overall.ci_high - m for m, e in zip(means, evals, strict=True)]]  # fmt: skip
    ax.barh([e.name for e in evals][::-1], means[::-1], xerr=[err[0][::-1], err[1][::-1]], color="#5b7bd5", capsize=4)
    ax.set_xlabel("mean return per user-day (95% CI), ground-truth world")
    note = (
        f"<p>{evals[0].overall.n_users:,} user-days per policy, the same users for every policy. The learning agents "
        "were trained only on the learned simulator (the mean response of the behavior model and its bootstrap "
        "members), where the pacing and frequency-cap rules were tuned too: this is the sim-to-real test.</p>"
    )
    return note + table + _png(fig)


def _ope_returns(r: QuickstartResult) -> str:
    """Estimated returns per user-day beside the true ones, ranked, and the offline pick against the true best."""
    sel = r.selection
    if not sel:
        return ""
    rows = []
    for k, entry in enumerate(sel["ranking"], 1):
        name = entry["policy"]
        truth = r.ope[name]["true_return"]
        rel = abs(entry["value"] - truth) / abs(truth) if truth else float("nan")
        covers = "yes" if entry["lower"] <= truth <= entry["upper"] else "no"
        ci = f"[{entry['lower']:.4f}, {entry['upper']:.4f}]"
        rows.append([str(k), html.escape(name), f"{entry['value']:.4f}", ci, f"{truth:.4f}", f"{rel:.1%}", covers])
    true_best = max(r.ope[n]["true_return"] for n in r.ope)
    picked = r.ope[r.selected]["true_return"]
    regret = (true_best - picked) / abs(true_best) if true_best else float("nan")
    note = (
        f"<p>Each policy rolled out in {html.escape(sel['estimator'])}: the learned simulator (an ensemble of behavior "
        "models fitted on bootstrap resamples of the logged user-days) from the logged users' first states; the "
        "interval holds the sampling of users and the spread between the models. Offline selection (the highest "
        "lower bound above the logging policy's value, else the top estimate) picks "
        f"<b>{html.escape(r.selected)}</b> (true return {picked:.4f}); the true best is <b>{html.escape(r.best)}</b> "
        f"(true return {true_best:.4f}): regret {regret:.1%}. Ship rule: {html.escape(sel['message'])}.</p>"
    )
    return note + _table(
        ["rank", "policy", "estimated return", "95% CI", "true return", "rel. error", "CI covers"],
        rows,
        best_row=next(k for k, e in enumerate(sel["ranking"]) if e["policy"] == r.selected),
    )


def _ope(r: QuickstartResult) -> str:
    rows = []
    for name, o in r.ope.items():
        truth = o["true_return"]  # the main job estimates the return per user-day only
        for est, e in o["estimates"].items():
            scope = SCOPE[est]
            value = e["value"]
            rel = abs(value - truth) / abs(truth) if truth else float("nan")
            covered = e["lower"] <= truth <= e["upper"]
            rows.append([html.escape(name), est, scope, f"{value:.4f}", f"[{e['lower']:.4f}, {e['upper']:.4f}]",
                         f"{truth:.4f}", f"{rel:.1%}", "yes" if covered else "no",
                         _fmt(e.get("ess"), ",.0f")])  # fmt: skip
    note = (
        "<p>Beside it, the whole-episode importance-weighted estimators (PDIS, WIS) of the same return per user-day, "
        "with their effective sample size in episodes: the reference that needs no model, and how little of the log "
        "a sequential policy's weights leave. One-step values (DM, IPS, DR, ...) answer another question, the mean "
        "immediate reward per logged decision: <code>adrl ope --estimand step</code>.</p>"
    )
    header = ["policy", "estimator", "scope", "estimate", "95% CI", "true value", "rel. error", "CI covers", "ESS"]
    return _ope_returns(r) + note + _table(header, rows)


def _best(r: QuickstartResult) -> str:
    import matplotlib.pyplot as plt

    e = next(x for x in r.evaluations if x.name == (r.selected or r.best))
    sc = r.scenario
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    delay = e.delay_by_hour / np.maximum(e.delay_by_hour.sum(axis=1, keepdims=True), 1)
    for ax, data, labels, title in (
        (axes[0], delay.T, [f"{d} h" for d in sc.delays], "when: delay chosen, by decision hour"),
        (axes[1], e.slot_by_hour.T / max(e.overall.n_users, 1), [s.name for s in sc.slots], "where: ads per user"),
        (axes[2], e.creative_by_hour.T / max(e.overall.n_users, 1), [c.name for c in sc.creatives],
         "what: ads per user by creative"),
    ):  # fmt: skip
        im = ax.imshow(data, aspect="auto", origin="lower", cmap="viridis")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("hour of day")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.04)
    shown = e.shown_by_hour
    name = html.escape(r.selected or r.best)
    return (
        f"<p>Exported policy (the offline pick): <b>{name}</b>; it shows {shown.sum():.2f} ads per user-day.</p>"
        + _png(fig)
    )


def _next(r: QuickstartResult) -> str:
    policy = html.escape(str(r.best_policy))
    return (
        "<p>Serve the exported policy over HTTP:</p>"
        f"<pre>ADRL_LOG_KEY=$(openssl rand -hex 32) adrl serve --policy {policy} --port 8000 "
        "--log-dir runs/serve-log</pre>"
        "<p>Or query it from Python:</p>"
        f'<pre>import adrl\npolicy = adrl.load_policy("{policy}")\n'
        'decision = policy.decide(user={"segment": "commuter"}, context={"hour": 8})\n'
        "print(decision)</pre>"
    )


def write_report(r: QuickstartResult) -> None:
    """Render every section into ``r.report`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    render = {"scenario": _scenario, "logs": _logs, "behavior": _behavior, "learning": _learning,
              "policies": _policies, "ope": _ope, "best": _best, "next": _next}  # fmt: skip
    body = "".join(f'<section id="{key}"><h2>{title}</h2>{render[key](r)}</section>' for key, title in SECTIONS)
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS)
    took = sum(r.seconds.values())
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>adrl quickstart report</title>"
        f"<style>{CSS}</style></head><body><header><h1>adrl quickstart</h1>"
        f"<p>Logs → behavior model → agents on the learned simulator → ground-truth and off-policy evaluation"
        f" · {took:.0f} s</p></header><nav>{nav}</nav><main>{body}</main></body></html>"
    )
    with atomic_open(r.report, "w") as f:
        f.write(page)
