"""Conditional flow matching (Lipman et al. 2023; Liu et al. 2023, rectified flow; Tong et al. 2024, minibatch OT).

* probability paths (``_path.py``): :class:`LinearPath` (conditional OT / rectified flow), :class:`VPPath`;
* couplings (``_coupling.py``): :func:`ot_coupling`, :func:`linear_assignment`, :func:`condition_groups`;
* the loss (``_cfm.py``): :func:`cfm_loss`, :func:`make_flow_loss`.

Time runs from the data (``t = 0``) to the prior ``N(0, I)`` (``t = 1``), as in :mod:`genjax.diffusion`. Trained
networks become :class:`genjax.VelocityField`; :func:`genjax.sample_flow` and :func:`genjax.flow_log_likelihood`
integrate them.
"""

from ._cfm import cfm_loss as cfm_loss
from ._cfm import check_flow_options as check_flow_options
from ._cfm import make_flow_loss as make_flow_loss
from ._coupling import condition_groups as condition_groups
from ._coupling import linear_assignment as linear_assignment
from ._coupling import ot_coupling as ot_coupling
from ._path import AbstractPath as AbstractPath
from ._path import LinearPath as LinearPath
from ._path import VPPath as VPPath
