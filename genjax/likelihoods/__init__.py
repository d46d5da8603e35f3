"""Count likelihoods, accurate in float32: negative binomial (mean ``mu``, inverse dispersion ``theta``),
zero-inflated NB (zero inflation as logits) and Poisson.

* log-pmfs (``_log_prob.py``): :func:`nb_log_prob`, :func:`zinb_log_prob`, :func:`poisson_log_prob` and their
  ``*_log`` forms taking log-parameters, from Loader's saddle-point pieces (``_special.py``);
* samplers (``_variates.py``): :func:`sample_nb`, :func:`sample_zinb` (gamma-Poisson); :func:`carry_counts`
  (counts carried from one NB / Poisson mean to another, the identity for no change);
* moments (``_moments.py``): :func:`nb_mean`, :func:`nb_variance`, :func:`zinb_mean`, :func:`zinb_variance`;
* numpyro distributions (``_distributions.py``): :class:`NegativeBinomial`, :class:`ZeroInflatedNegativeBinomial`;
* fused training sums (``_fused.py``): :func:`fast_count_log_lik`, the same values with fewer special functions,
  for VAE losses;
* argument checks (``_validation.py``): :func:`check_args`.
"""

from ._distributions import NegativeBinomial as NegativeBinomial
from ._distributions import ZeroInflatedNegativeBinomial as ZeroInflatedNegativeBinomial
from ._fused import SMALL as SMALL
from ._fused import fast_count_log_lik as fast_count_log_lik
from ._fused import small_count_histogram as small_count_histogram
from ._fused import small_count_tables as small_count_tables
from ._log_prob import nb_log_prob as nb_log_prob
from ._log_prob import nb_log_prob_log as nb_log_prob_log
from ._log_prob import poisson_log_prob as poisson_log_prob
from ._log_prob import poisson_log_prob_log as poisson_log_prob_log
from ._log_prob import zinb_log_prob as zinb_log_prob
from ._log_prob import zinb_log_prob_log as zinb_log_prob_log
from ._moments import nb_mean as nb_mean
from ._moments import nb_variance as nb_variance
from ._moments import zinb_mean as zinb_mean
from ._moments import zinb_variance as zinb_variance
from ._special import delta_digamma_log as delta_digamma_log
from ._special import log_pochhammer_ratio as log_pochhammer_ratio
from ._special import stirlerr as stirlerr
from ._special import stirlerr_count as stirlerr_count
from ._validation import check_args as check_args
from ._variates import carry_counts as carry_counts
from ._variates import sample_nb as sample_nb
from ._variates import sample_zinb as sample_zinb
