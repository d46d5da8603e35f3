"""Training: the jitted loop, data feeding, checkpoints, distributed runs."""

from ._checkpoint import *  # noqa: F403
from ._distributed import *  # noqa: F403
from ._loop import *  # noqa: F403
