"""Score-based diffusion (Song et al. 2021): forward SDEs, noise schedules, score parameterisations and
denoising score matching, as pure functions and ``equinox`` modules.

* schedules (``_schedule.py``): :class:`LinearSchedule`, :class:`CosineSchedule`;
* SDEs (``_sde.py``): :class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`ReverseSDE`;
* parameterisations (``_parameterisation.py``): :data:`PARAMETERISATIONS`, :func:`convert_output`;
* the loss (``_dsm.py``): :func:`dsm_loss`, :func:`make_dsm_loss`.

Trained networks become fields in :mod:`genjax.fields` (:class:`genjax.ScoreFunction`); samplers and likelihoods
are in :mod:`genjax.solvers`.
"""

from ._dsm import check_dsm_options as check_dsm_options
from ._dsm import dsm_loss as dsm_loss
from ._dsm import make_dsm_loss as make_dsm_loss
from ._parameterisation import PARAMETERISATIONS as PARAMETERISATIONS
from ._parameterisation import convert_output as convert_output
from ._parameterisation import parameterisation_coefficients as parameterisation_coefficients
from ._schedule import CosineSchedule as CosineSchedule
from ._schedule import LinearSchedule as LinearSchedule
from ._schedule import Schedule as Schedule
from ._sde import SDES as SDES
from ._sde import VESDE as VESDE
from ._sde import VPSDE as VPSDE
from ._sde import AbstractSDE as AbstractSDE
from ._sde import ReverseSDE as ReverseSDE
from ._sde import SubVPSDE as SubVPSDE
from ._sde import make_sde as make_sde
