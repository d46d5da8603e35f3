"""Alias of :mod:`genjax.evaluation.plots`: ``import genjax.plots`` keeps working."""

import sys

from .evaluation import plots

sys.modules[__name__] = plots
