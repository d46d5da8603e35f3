"""Alias of :mod:`genjax.evaluation.metrics`: ``import genjax.metrics`` keeps working."""

import sys

from .evaluation import metrics

sys.modules[__name__] = metrics
