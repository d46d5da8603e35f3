"""Alias of :mod:`genjax.evaluation.report`: ``import genjax.report`` keeps working."""

import sys

from .evaluation import report

sys.modules[__name__] = report
