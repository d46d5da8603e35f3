"""Flax (linen) building blocks for score, noise and velocity networks.

* conditions (``_condition.py``; the :class:`Condition` type itself is :class:`genjax.data.Condition`):
  :func:`null_condition`, :func:`drop_condition`, :func:`call_field`, :func:`split_field_batch`;
* time (``_time.py``): :class:`SinusoidalEmbedding`, :func:`sample_times`;
* embeddings (``_embedding.py``): :class:`ConditionEmbedding`;
* trunks (``_mlp.py``): :class:`MLP`, :class:`FiLM`, :class:`ResidualBlock`, :class:`ResMLP`,
  :class:`CovariateMLP`;
* :class:`FieldNet` (``_field_net.py``): ``(x, t, cond) -> (n, d)``, the network behind score and velocity models;
* :class:`DiTField` (``_dit.py``): the same call as a diffusion transformer over tokens of grouped dimensions
  (latent groups or gene programmes, :func:`program_tokens`) with adaLN-Zero blocks (:class:`DiTBlock`; Peebles &
  Xie 2023); :func:`token_ids` checks a tokenisation.
"""

from ..data import NULL_LABEL as NULL_LABEL
from ..data import Condition as Condition
from ..data import check_condition as check_condition
from ._condition import call_field as call_field
from ._condition import call_score as call_score
from ._condition import drop_condition as drop_condition
from ._condition import null_condition as null_condition
from ._condition import split_field_batch as split_field_batch
from ._dit import DiTBlock as DiTBlock
from ._dit import DiTField as DiTField
from ._dit import program_tokens as program_tokens
from ._dit import token_ids as token_ids
from ._embedding import ConditionEmbedding as ConditionEmbedding
from ._field_net import FieldNet as FieldNet
from ._mlp import MLP as MLP
from ._mlp import CovariateMLP as CovariateMLP
from ._mlp import Covariates as Covariates
from ._mlp import FiLM as FiLM
from ._mlp import ResidualBlock as ResidualBlock
from ._mlp import ResMLP as ResMLP
from ._mlp import dropout_threshold as dropout_threshold
from ._time import TIME_SAMPLING as TIME_SAMPLING
from ._time import SinusoidalEmbedding as SinusoidalEmbedding
from ._time import sample_times as sample_times
