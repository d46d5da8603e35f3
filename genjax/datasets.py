"""Alias of :mod:`genjax.data.datasets`: ``genjax.datasets.pbmc3k()`` keeps working."""

import sys

from .data import datasets

sys.modules[__name__] = datasets
