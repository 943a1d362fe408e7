"""The HTML report: ``build_report(run_dir)`` writes one self-contained ``RUN_DIR/report.html``."""

from dermcam.report.html import build_report

__all__ = ["build_report"]
