"""The HTML report: ``build_report(run_dir)`` writes ``RUN_DIR/report.html``.

One self-contained page (figures as base64 data URIs, inline stylesheet, one inline
script) rendered by Jinja2 from the run's findings and :mod:`dermcam.views` tables.
"""

from dermcam.report.html import build_report

__all__ = ["build_report"]
