"""Screenshot of a dermcam report's first screen, for the README.

Run from the repository root after ``dermcam demo``::

    python docs/make_screenshot.py dermcam-demo/run/report.html

It opens the page in headless Chromium at 1400x900 and writes docs/images/report.png
(``--out`` for another path). Needs ``chromium`` on the PATH (Debian: ``apt-get install
chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH, HEIGHT = 1400, 900
DEFAULT_OUT = Path(__file__).resolve().parent / "images" / "report.png"


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("make_screenshot: no chromium on the PATH (Debian: apt-get install chromium)")


def screenshot(report: Path, out: Path, timeout: float = 120.0) -> Path:
    """Write a WIDTHxHEIGHT PNG of ``report``'s first screen to ``out``."""
    report = report.resolve()
    if not report.is_file():
        sys.exit(f"make_screenshot: {report} is not a file (run 'dermcam demo' first)")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dermcam-chromium-") as profile:
        cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
               f"--screenshot={out}", report.as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            sys.exit(f"make_screenshot: chromium did not finish within {timeout:.0f} s")
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"make_screenshot: chromium exited {done.returncode}:\n{done.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report.html written by dermcam")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="PNG to write (default docs/images/report.png)")
    args = parser.parse_args(argv)
    print(screenshot(args.report, args.out))


if __name__ == "__main__":
    main()
