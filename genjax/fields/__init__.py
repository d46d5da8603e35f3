"""What the solvers integrate: batched fields ``f(x, t, cond=None) -> (n, d)``, and how they are trained.

* the contract (``_base.py``): :class:`AbstractField`;
* fields (``_score.py``, ``_velocity.py``, ``_probability_flow.py``): :class:`ScoreFunction`,
  :class:`VelocityField`, :class:`ProbabilityFlow`;
* classifier-free guidance (``_guidance.py``): :class:`GuidedField`, :func:`guided_field`;
* training objectives (``_objective.py``): :class:`DenoisingScoreMatching`, :class:`ConditionalFlowMatching`
  (what :func:`genjax.fit_field` trains, and what the trained parameters become).
"""

from ._base import AbstractField as AbstractField
from ._guidance import GuidedField as GuidedField
from ._guidance import guidance_groups as guidance_groups
from ._guidance import guided_field as guided_field
from ._objective import AbstractObjective as AbstractObjective
from ._objective import ConditionalFlowMatching as ConditionalFlowMatching
from ._objective import DenoisingScoreMatching as DenoisingScoreMatching
from ._probability_flow import ProbabilityFlow as ProbabilityFlow
from ._score import ScoreFunction as ScoreFunction
from ._velocity import VelocityField as VelocityField
