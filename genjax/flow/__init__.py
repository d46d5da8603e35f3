"""Flow matching: probability paths, couplings, conditional flow matching."""

from ._flow import *  # noqa: F403
