"""Evaluation: two-sample metrics beside a real-vs-real control, plots, report."""

from . import metrics, plots, report  # noqa: F401
