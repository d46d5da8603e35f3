"""Array type aliases used in signatures and docstrings (jaxtyping, as diffrax `_custom_types.py`).

Shapes are named in words: ``cells``, ``genes``, ``latent``, ``batch``, ``dim``. Likelihood arguments are
"broadcastable" and carry no fixed shape.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Int",
    "PRNGKeyArray",
    "PyTree",
    "Counts",
    "LogExpr",
    "Latent",
    "Points",
    "Times",
    "Params",
]

Counts = Float[Array, "cells genes"]
"""Raw counts (non-negative integers stored as float32), cells x genes."""

LogExpr = Float[Array, "cells genes"]
"""log1p of (optionally normalised) expression."""

Latent = Float[Array, "cells latent"]
"""Latent codes of a VAE."""

Points = Float[Array, "n dim"]
"""A batch of points in the space a generative prior models (latents or log-expression)."""

Times = Float[Array, " n"]
"""One diffusion / flow time per point."""

Params = PyTree[Any]
"""A pytree of model parameters (e.g. a Flax ``params`` dict)."""
