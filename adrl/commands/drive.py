"""``adrl drive``: ground-truth users living simulated days against a policy server on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from adrl.commands import cli_errors, console
from adrl.errors import ConfigError, DataError
from adrl.io import check_output, write_json_atomic


def register(app: typer.Typer) -> None:
    @app.command("drive")
    def drive_cmd(
        url: Annotated[str, typer.Option(help="server base URL on loopback, e.g. http://127.0.0.1:8000")],
        users: Annotated[int, typer.Option(min=1, max=1_000_000, help="users (each lives --days days)")] = 1000,
        days: Annotated[int, typer.Option(min=1, max=366, help="days each user lives")] = 1,
        seed: Annotated[int, typer.Option(min=0, help="seed of the users and their outcomes")] = 0,
        day_offset: Annotated[
            int, typer.Option(min=0, help="number of the first day (a later run of the same users continues)")
        ] = 0,
        scenario: Annotated[
            Path | None, typer.Option(help="the server's scenario YAML (default: the built-in market)")
        ] = None,
        max_seconds: Annotated[float, typer.Option(min=0.001, help="stop after this many seconds")] = 600.0,
        api_key_env: Annotated[
            str | None, typer.Option(help="environment variable holding the server's API key")
        ] = None,
        truth_users: Annotated[
            int, typer.Option(min=0, max=1_000_000, help="users for each arm's true value (0: skip)")
        ] = 0,
        out: Annotated[Path | None, typer.Option(help="write the summary (and truth) as JSON here")] = None,
        force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
    ) -> None:
        """Drive a server with simulated users: decisions, world outcomes, feedback; prints a JSON summary.

        Example: adrl drive --url http://127.0.0.1:8000 --users 10000 --days 1 --seed 0
        """
        from adrl.drive import HttpEndpoint, drive, true_values
        from adrl.policy import Exploration, load_policy
        from adrl.scenario import resolve_scenario

        with cli_errors():
            if out is not None:
                check_output(out, kind="file", force=force)
            key = None
            if api_key_env:
                key = os.environ.get(api_key_env)
                if not key:
                    raise ConfigError(f"--api-key-env {api_key_env}: the variable is not set or empty")
            sc = resolve_scenario(scenario)
            endpoint = HttpEndpoint(url, api_key=key)
            served = _get(endpoint, "/v1/policy")
            if served.get("scenario_hash") != sc.content_hash:
                raise ConfigError(
                    f"the server at {url} serves scenario {served.get('scenario_name')!r} "
                    f"({served.get('scenario_hash')}), the driver's is {sc.name!r} ({sc.content_hash}); "
                    "pass the server's --scenario"
                )
            result = drive(endpoint, sc, users=users, days=days, seed=seed, day_offset=day_offset,
                           max_seconds=max_seconds)  # fmt: skip
            endpoint.close()
            summary: dict[str, Any] = result.summary()
            if truth_users:
                exp = _get(endpoint, "/v1/experiment")
                history = exp.get("history") or []
                if not history:
                    raise DataError(f"{url} runs no experiment; --truth-users needs arms")
                arms = history[-1]["arms"]
                policies = {
                    a["name"]: load_policy(a["policy"], exploration=Exploration.parse(a["exploration"]), seed=seed)
                    for a in arms
                }
                summary["truth"] = true_values(policies, sc, users=truth_users, days=days, seed=seed + 1)
            text = json.dumps(summary, indent=2)
            if out is not None:
                write_json_atomic(out, summary)
            console.print(text, soft_wrap=True, markup=False, highlight=False)


def _get(endpoint: Any, path: str) -> dict[str, Any]:
    import http.client

    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=endpoint.timeout)
    try:
        conn.request("GET", endpoint.prefix + path, headers=endpoint.headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as e:
        raise DataError(f"{path}: no server answering at {endpoint.host}:{endpoint.port} ({e})") from e
    finally:
        conn.close()
    if resp.status != 200:
        raise DataError(f"{path}: HTTP {resp.status}: {data[:300].decode(errors='replace')}")
    out: dict[str, Any] = json.loads(data)
    return out
