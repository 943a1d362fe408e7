"""The HTML report: ``build_report(run_dir)`` writes ``RUN_DIR/report.html``.

One self-contained page (figures as base64 data URIs, inline stylesheet, a few
lines of inline script) built only from the run folder's own files.
"""

from dermcam.report.html import build_report, render

__all__ = ["build_report", "render"]
