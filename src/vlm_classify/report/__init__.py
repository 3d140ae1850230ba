"""The decision report: metrics with uncertainty, paired comparisons, cost and break-even, plots,
report.md and a self-contained report.html."""

from __future__ import annotations

from .build import ReportOptions, ReportResult, build_report, compute

__all__ = ["ReportOptions", "ReportResult", "build_report", "compute"]
