"""``adrl fit``: learn the behavior model from logs and print its held-out metrics beside the baselines."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from adrl.behavior.training import FitConfig, FitReport, fit_adrl, fit_obd
from adrl.commands import cli_errors, console, err_console
from adrl.errors import ConfigError
from adrl.io import check_output
from adrl.logs import log_files
from adrl.obd import resolve_obd_paths
from adrl.scenario import resolve_scenario

SOURCE_LABELS = {
    "model": "behavior model",
    "logistic_regression": "logistic regression",
    "random_forest": "random forest",
    "truth": "true probabilities",
}


class LogFormat(StrEnum):
    adrl = "adrl"
    obd = "obd"


class Inputs(StrEnum):
    impression = "impression"
    decision = "decision"


def _num(x: float, fmt: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"64,64"`` -> ``(64, 64)``; ``ConfigError`` naming the value otherwise."""
    try:
        widths = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"--hidden must be comma-separated layer widths >= 1 such as 64,64; got {text!r}")
    return widths


def metrics_tables(report: FitReport) -> list[Table]:
    """One table per head (sources as rows), then calibration of the model by slot and by hour."""
    tables = []
    for head, by_source in report.metrics.items():
        t = Table(title=f"{head}: validation ({by_source['model'].n:,} impressions)")
        for col in ("", "AUC", "log loss", "norm. entropy", "pred/obs", "ECE", "base rate"):
            t.add_column(col, justify="left" if not col else "right")
        for source, m in by_source.items():
            t.add_row(
                SOURCE_LABELS.get(source, source),
                _num(m.auc),
                _num(m.log_loss, ".5f"),
                _num(m.normalized_entropy),
                _num(m.calibration, ".3f"),
                _num(m.ece, ".5f"),
                _num(m.base_rate, ".5f"),
            )
        tables.append(t)
    model = {h: by["model"] for h, by in report.metrics.items()}
    slots = list(next(iter(model.values())).calibration_by_slot)
    t = Table(title="behavior model calibration (pred/obs) by slot")
    t.add_column("head")
    for s in slots:
        t.add_column(s, justify="right")
    for h, m in model.items():
        t.add_row(h, *(_num(m.calibration_by_slot.get(s, float("nan")), ".3f") for s in slots))
    tables.append(t)
    hours = sorted({int(x) for m in model.values() for x in m.calibration_by_hour})
    t = Table(title="behavior model calibration (pred/obs) by hour")
    t.add_column("hour", justify="right")
    for h in model:
        t.add_column(h, justify="right")
    for hour in hours:
        t.add_row(str(hour), *(_num(m.calibration_by_hour.get(str(hour), float("nan")), ".3f") for m in model.values()))
    tables.append(t)
    return tables


def register(app: typer.Typer) -> None:
    @app.command("fit")
    def fit_cmd(
        logs: Annotated[Path, typer.Option(help="adrl parquet log (file or directory), or the OBD folder/CSV")],
        out: Annotated[Path, typer.Option(help="artifact directory (model.json + weights.safetensors)")] = Path(
            "runs/behavior"
        ),
        data_format: Annotated[LogFormat, typer.Option("--format", help="adrl logs or the Open Bandit Dataset")] = (
            LogFormat.adrl
        ),
        scenario: Annotated[
            Path | None, typer.Option(help="scenario YAML the adrl log was simulated with (default: built-in)")
        ] = None,
        epochs: Annotated[int, typer.Option(min=1, help="maximum passes over the training data")] = 30,
        patience: Annotated[int, typer.Option(min=1, help="stop after this many epochs without improvement")] = 3,
        seed: Annotated[int, typer.Option(min=0, help="random seed (numpy and torch are seeded from it)")] = 0,
        batch_size: Annotated[
            int | None, typer.Option(min=1, help="minibatch rows (default 2048 for adrl, 128 for obd)")
        ] = None,
        learning_rate: Annotated[
            float | None, typer.Option(min=0.0, help="Adam learning rate (default 3e-3 for adrl, 1e-2 for obd)")
        ] = None,
        weight_decay: Annotated[
            float | None, typer.Option(min=0.0, help="Adam weight decay (default 1e-6 for adrl, 1e-3 for obd)")
        ] = None,
        hidden: Annotated[str, typer.Option(help="widths of the shared MLP layers")] = "64,64",
        embedding_dim: Annotated[int, typer.Option(min=1, help="width of each categorical embedding")] = 8,
        fm_dim: Annotated[int, typer.Option(min=1, help="width of the user/item factorization vectors")] = 8,
        validation_fraction: Annotated[
            float | None,
            typer.Option(help="share of users (adrl) or of the latest impressions (obd) held out; 0.2 / 0.3"),
        ] = None,
        clusters: Annotated[
            int | None, typer.Option(min=1, help="KMeans user segments for logs without a segment column (obd; 8)")
        ] = None,
        obd_policy: Annotated[str, typer.Option(help="OBD behavior policy folder: random or bts")] = "random",
        obd_campaign: Annotated[str, typer.Option(help="OBD campaign: all, men or women")] = "all",
        baselines: Annotated[bool, typer.Option(help="also fit logistic-regression and random-forest baselines")] = (
            True
        ),
        baseline_rows: Annotated[int, typer.Option(min=1, help="training rows sampled for the baselines")] = 200_000,
        forest_rows: Annotated[int, typer.Option(min=1, help="of those, rows for the random forest")] = 100_000,
        inputs: Annotated[
            Inputs,
            typer.Option(
                help="adrl: every input (default), or only the user's state at the impression (the delay then "
                "acts through the state it leads to; adrl.behavior.inputs)"
            ),
        ] = Inputs.decision,
        json_out: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
        force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
    ) -> None:
        """Fit the behavior model (click, conversion, leave) on logged impressions and save it.

        Example: adrl fit --logs runs/logs.parquet --out runs/behavior --epochs 30 --seed 0

        Example (Open Bandit Dataset, click head only): adrl fit --format obd --logs ../shared/data/obd
        --out runs/behavior-obd
        """
        with cli_errors(sigterm=True):
            is_obd = data_format is LogFormat.obd
            if is_obd and scenario is not None:
                raise ConfigError("--scenario applies to adrl logs only; OBD data has its own items and features")
            if not is_obd and clusters is not None:
                raise ConfigError(
                    f"--clusters {clusters}: adrl logs carry the user segment (x_segment), so no KMeans profiling is "
                    "needed; --clusters applies to --format obd"
                )
            cfg = FitConfig(
                epochs=epochs,
                patience=patience,
                seed=seed,
                batch_size=batch_size or (128 if is_obd else 2048),
                learning_rate=learning_rate or (1e-2 if is_obd else 3e-3),
                weight_decay=weight_decay if weight_decay is not None else (1e-3 if is_obd else 1e-6),
                hidden=parse_hidden(hidden),
                embedding_dim=embedding_dim,
                fm_dim=fm_dim,
                validation_fraction=validation_fraction or (0.3 if is_obd else 0.2),
                clusters=clusters or 8,
                baselines=baselines,
                baseline_rows=baseline_rows,
                forest_rows=forest_rows,
                impression_inputs=inputs is Inputs.impression,
            )
            if is_obd and inputs is Inputs.impression:
                raise ConfigError("--inputs applies to adrl logs only; OBD rows have no delay or exposure features")
            if is_obd:  # the inputs are named before the output is checked: the first error is the likely one
                resolve_obd_paths(logs, obd_policy, obd_campaign)
            else:
                log_files(logs)
            check_output(out, kind="directory", force=force)
            progress_console = err_console if json_out else console
            if is_obd:
                report = fit_obd(
                    logs,
                    cfg,
                    behavior_policy=obd_policy,
                    campaign=obd_campaign,
                    progress=not json_out,
                    console=progress_console,
                )
            else:
                report = fit_adrl(
                    logs, resolve_scenario(scenario), cfg, progress=not json_out, console=progress_console
                )
            report.model.save(out)
            if json_out:
                console.print_json(json.dumps({"out": str(out), **report.metrics_json()}))
                return
            for table in metrics_tables(report):
                console.print(table)
            epochs_run = len(report.history)
            best = min(report.history, key=lambda r: r["validation_loss"])
            console.print(
                f"trained {epochs_run} epoch(s) on {report.n_train:,} impressions (best epoch {int(best['epoch'])}); "
                f"split {report.split}; {report.seconds:.1f} s"
            )
            for note in report.notes:
                console.print(f"note: {note}")
            console.print(f"saved {out}/model.json and {out}/weights.safetensors")
