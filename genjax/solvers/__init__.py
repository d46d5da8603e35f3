"""Samplers and exact likelihoods on diffrax, by equation type.

* reverse-time SDE (``_sde.py``): :func:`sample_reverse_sde`, :func:`sample_predictor_corrector`;
* ODEs from the prior (``_ode.py``): :func:`sample_probability_flow_ode`, :func:`sample_flow`, :func:`time_grid`;
* change of variables (``_likelihood.py``): :func:`log_likelihood`, :func:`flow_log_likelihood`;
* shared per-point solves and checks (``_common.py``), the predictor-corrector solver (``_predictor_corrector.py``).

Every sampler takes a batched field ``f(x, t)`` or ``f(x, t, cond)`` (``x: (n, d)``, ``t: (n,)`` -> ``(n, d)``),
e.g. a :class:`genjax.ScoreFunction`, :class:`genjax.VelocityField` or :class:`genjax.GuidedField`.
"""

from ._common import log_likelihood_batch as log_likelihood_batch
from ._common import solve_ode_batch as solve_ode_batch
from ._likelihood import flow_log_likelihood as flow_log_likelihood
from ._likelihood import log_likelihood as log_likelihood
from ._ode import sample_flow as sample_flow
from ._ode import sample_probability_flow_ode as sample_probability_flow_ode
from ._ode import time_grid as time_grid
from ._predictor_corrector import PredictorCorrector as PredictorCorrector
from ._sde import sample_predictor_corrector as sample_predictor_corrector
from ._sde import sample_reverse_sde as sample_reverse_sde
