"""Evaluation: how close generated cells are to real ones, always beside a real-vs-real control.

* :mod:`genjax.evaluation.metrics` (alias ``genjax.metrics``): :func:`~genjax.metrics.evaluate` and the
  two-sample statistics it is built from;
* :mod:`genjax.evaluation.plots` (alias ``genjax.plots``): figures of an evaluation and of training histories;
* :mod:`genjax.evaluation.report` (alias ``genjax.report``): a markdown report with tables and figures;
* :func:`integration` (also ``genjax.metrics.integration``): scib's integration metrics of a latent (batch ASW,
  iLISI, kBET acceptance, label ASW, cLISI, graph connectivity).
"""

from . import metrics as metrics
from . import plots as plots
from . import report as report
from ._evaluate import Evaluation as Evaluation
from ._evaluate import evaluate as evaluate
from ._integration import IntegrationDetails as IntegrationDetails
from ._integration import integration as integration
