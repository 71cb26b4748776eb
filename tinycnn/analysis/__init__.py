"""Analysis of trained models: per-class accuracy, t-SNE of codes, filters, the HTML report."""

from __future__ import annotations

from tinycnn.analysis.report import Report, build_report

__all__ = ["Report", "build_report"]
