"""Open the quickstart's report.html in a real headless browser (Debian's chromium) and save a screenshot (JSON).

Installs chromium with apt-get when it is missing (root, Debian). Renders the page once to dump the DOM as the
browser built it (every section must be there, every embedded image decoded) and once to take a full-page
screenshot. With no --report it runs ``adrl quickstart --fast`` first.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from adrl.report import SECTIONS

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("chromium could not be installed")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/report.png"))
    ap.add_argument("--height", type=int, default=6200)
    args = ap.parse_args()
    report = args.report
    if report is None:
        qs = Path("runs/quickstart-fast")
        subprocess.run([sys.executable, "-m", "adrl.cli", "quickstart", "--fast", "--force", "--out", str(qs)],
                       check=True, capture_output=True)  # fmt: skip
        report = qs / "report.html"
    browser = chromium()
    url = report.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size=1280,{args.height}",
                        f"--screenshot={args.out.resolve()}", url], capture_output=True, timeout=120)  # fmt: skip
    missing = [key for key, _ in SECTIONS if f'id="{key}"' not in dom]
    print(json.dumps({
        "benchmark": "report_screenshot",
        "browser": subprocess.run([browser, "--version"], capture_output=True, text=True).stdout.strip(),
        "report": str(report),
        "screenshot": str(args.out),
        "screenshot_bytes": args.out.stat().st_size if args.out.is_file() else 0,
        "sections_rendered": [key for key, _ in SECTIONS if key not in missing],
        "sections_missing": missing,
        "images_in_dom": len(re.findall(r"<img ", dom)),
        "tables_in_dom": len(re.findall(r"<table>", dom)),
    }, indent=2))  # fmt: skip
    if missing or not args.out.is_file():
        raise SystemExit(1)


if __name__ == "__main__":
    main()
