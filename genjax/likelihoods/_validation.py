"""Host-side validation of likelihood arguments, and the dtype rules every likelihood function follows.

Called on concrete (non-traced) arrays, the public functions check their arguments on the host and raise
``ValueError`` naming the function, the argument, the requirement, the first offending value and its index. Under
``jit`` / ``vmap`` / ``grad`` no check is possible; :func:`invalid_mask` is what the kernels use to return NaN
there instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._typing import ArrayLike

__all__ = ["float_dtype", "as_float", "is_concrete", "RULES", "check_args", "validate_args_if", "invalid_mask",
           "checked", "VALID", "masked_kernel"]


def float_dtype(*args) -> jnp.dtype:
    """float64 if the promoted inputs are float64 (x64 enabled), float32 otherwise (ints, halves included)."""
    dtype = jnp.result_type(*args)
    return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def as_float(dtype, *args):
    """The arguments as (strongly typed) arrays of ``dtype``: one jit cache entry whatever mix of Python scalars,
    integer counts and arrays the caller passes."""
    return tuple(jnp.asarray(a, dtype) for a in args)


def is_concrete(*args) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in args)


RULES = {
    # kind: (predicate for bad values on a float64 numpy array, given the largest finite log of the computation
    # dtype; requirement in words)
    "counts": (lambda a, top: ~(a >= 0) | ~np.isfinite(a) | (a != np.floor(a)), "non-negative integers (counts)"),
    "mean": (lambda a, top: ~(a >= 0) | ~np.isfinite(a), "finite and >= 0"),
    "positive": (lambda a, top: ~(a > 0) | ~np.isfinite(a), "finite and > 0"),
    "real": (lambda a, top: ~np.isfinite(a), "finite"),
    "log_mean": (lambda a, top: np.isnan(a) | (a > top),
                 "not NaN and at most {top:.2f} (exp overflows {dtype} beyond it; -inf means mu = 0)"),
}


def check_args(fn_name: str, **named: tuple[ArrayLike, str]) -> None:
    """Raise ``ValueError`` for the first argument with an invalid value (host-side; concrete arrays only).

    Arguments:
        fn_name: the public name used in the message.
        named: ``name=(array, kind)`` with kind one of ``counts``, ``mean``, ``positive``, ``real``, ``log_mean``.

    Raises:
        ValueError: naming the function, the argument, the requirement, the first offending value and its index.
    """
    dtype = float_dtype(*(value for value, _ in named.values()))
    top = float(np.log(np.finfo(dtype).max))
    for name, (value, kind) in named.items():
        arr = np.asarray(value, dtype=np.float64)
        is_bad, requirement = RULES[kind]
        bad = is_bad(arr, top)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{fn_name}: {name} must be {requirement.format(top=top, dtype=dtype)}; found {float(arr[idx])!r} "
                f"at index {idx} (shape {arr.shape}, {int(bad.sum())} invalid value(s))"
            )


def validate_args_if(validate_args: bool, fn_name: str, **named) -> None:
    if validate_args and is_concrete(*(v for v, _ in named.values())):
        check_args(fn_name, **named)


def invalid_mask(x, *param_conditions):
    """True where the counts are not non-negative integers or a parameter condition fails (NaN-aware)."""
    bad = ~(x >= 0) | (x != jnp.floor(x)) | (x == jnp.inf)
    for ok in param_conditions:
        bad = bad | ~ok
    return bad


# kind: the same requirement as RULES, as a traced predicate for valid values (NaN-aware)
VALID = {
    "mean": lambda a: (a >= 0) & (a < jnp.inf),
    "positive": lambda a: (a > 0) & (a < jnp.inf),
    "real": jnp.isfinite,
    "log_mean": lambda a: ~jnp.isnan(a) & (a < jnp.inf),
}


def masked_kernel(log_pmf, *kinds: str):
    """A jitted ``kernel(x, *params)``: ``log_pmf(x, *params)`` with NaN wherever the counts are not non-negative
    integers or a parameter is not of its kind (:data:`VALID`); eager calls then run one fused computation
    (compiled once per shape) instead of dispatching ~100 primitives, and inside a caller's jit it is inlined."""

    @jax.jit
    def kernel(x, *params):
        ok = [VALID[kind](p) for kind, p in zip(kinds, params, strict=True)]
        return jnp.where(invalid_mask(x, *ok), jnp.nan, log_pmf(x, *params))

    return kernel


def checked(kernel, fn_name: str, validate_args: bool, **named: tuple[ArrayLike, str]):
    """The body of every public likelihood function: check ``named`` (``name=(value, kind)``, see
    :func:`check_args`) when ``validate_args`` and the values are concrete, then call the jitted ``kernel`` on the
    values cast to their common float dtype (one compilation per dtype and shapes, whatever mix of Python scalars,
    integer counts and arrays the caller passes)."""
    validate_args_if(validate_args, fn_name, **named)
    values = [value for value, _ in named.values()]
    return kernel(*as_float(float_dtype(*values), *values))
