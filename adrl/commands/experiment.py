"""``adrl experiment report``: the readout of an A/B experiment from the server's log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from adrl.commands import cli_errors, console
from adrl.io import check_output, write_json_atomic


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="A/B experiments served by adrl serve.\n\nExample: adrl experiment report --logs runs/serve-log "
        "--out report.json (adrl experiment --help lists the subcommands)",
        no_args_is_help=True,
    )
    app.add_typer(group, name="experiment")

    @group.command("report")
    def report_cmd(
        logs: Annotated[Path, typer.Option(help="the server's --log-dir of the experiment")],
        out: Annotated[Path | None, typer.Option(help="write the readout as JSON here")] = None,
        pre_logs: Annotated[
            Path | None, typer.Option(help="log of the same users before the experiment (CUPED covariates)")
        ] = None,
        control: Annotated[str | None, typer.Option(help="the control arm (default: the first arm)")] = None,
        split: Annotated[
            str | None, typer.Option(help="expected percent per arm for the SRM check (default: as served)")
        ] = None,
        alpha: Annotated[float, typer.Option(min=1e-6, max=0.5, help="one minus the confidence level")] = 0.05,
        tau: Annotated[
            float | None, typer.Option(min=1e-12, help="mSPRT mixture scale (default: 10% of the control's return)")
        ] = None,
        ope: Annotated[bool, typer.Option(help="estimate each arm from the other arms' traffic")] = True,
        force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
    ) -> None:
        """Per-arm metrics, lifts with CIs, SRM, CUPED, an always-valid sequential test, guardrails and OPE.

        Example: adrl experiment report --logs runs/serve-log --out report.json
        """
        from adrl.experiment import ReadoutOptions, report

        with cli_errors():
            if out is not None:
                check_output(out, kind="file", force=force)
            shares = None
            if split is not None:
                from adrl.serving.experiment import parse_split

                shares = parse_split(split, len(split.split(",")))
            opts = ReadoutOptions(control=control, split=shares, alpha=alpha, tau=tau)
            result = report(logs, pre_logs=pre_logs, options=opts, ope=ope)
            if out is not None:
                write_json_atomic(out, result)
            console.print(json.dumps(result, indent=2, default=str), soft_wrap=True, markup=False, highlight=False)
