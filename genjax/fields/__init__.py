"""What the solvers integrate: score, velocity and guided fields."""

from ._guidance import *  # noqa: F403
