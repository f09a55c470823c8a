"""Argument validation shared by the public API.

Every check raises ``ValueError`` (or ``TypeError`` for wrong kinds of objects) with one message
that names the argument and the allowed range. Checks on array *values* (finiteness) run only on
concrete arrays: inside ``jax.jit`` the values are tracers and only shapes can be checked, so
validation happens at the Python boundary, before the jit boundary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def violates(x: Any, ok: Callable[[Array], Array]) -> bool:
    """True when ``x`` holds values and ``ok(x)`` is False somewhere; a tracer is not checked.

    Evaluated eagerly even inside a trace (``jax.ensure_compile_time_eval``), where ``ok`` on a
    closed-over constant would otherwise give a tracer that cannot become a bool. ``ok`` keys
    one compiled check per shape, so pass a module-level function, not a fresh lambda.
    """
    if not is_concrete(x):
        return False
    with jax.ensure_compile_time_eval():
        return not bool(_holds(x, ok))


@functools.partial(jax.jit, static_argnums=1)
def _holds(x: Array, ok: Callable[[Array], Array]) -> Array:
    return jnp.all(ok(x))


def positive_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Returns ``value`` as an int after checking ``minimum <= value <= maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")
    return value


def real_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_min: bool = False,
    strict_max: bool = False,
) -> float:
    """Returns ``value`` as a finite float inside the given (open or closed) interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    lo_bad = minimum is not None and (value <= minimum if strict_min else value < minimum)
    hi_bad = maximum is not None and (value >= maximum if strict_max else value > maximum)
    if lo_bad or hi_bad:
        lo = "-inf" if minimum is None else f"{minimum:g}"
        hi = "inf" if maximum is None else f"{maximum:g}"
        interval = ("(" if strict_min or minimum is None else "[") + f"{lo}, {hi}"
        interval += ")" if strict_max or maximum is None else "]"
        raise ValueError(f"{name} must lie in {interval}, got {value:g}")
    return value


def one_of(name: str, value: Any, choices: Iterable[str]) -> str:
    """Checks that ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def sparsity(k: int, n: int, *, k_name: str = "k", n_name: str = "n") -> None:
    """Checks 1 <= k <= n."""
    positive_int(n_name, n)
    positive_int(k_name, k)
    if k > n:
        raise ValueError(f"{k_name} must be <= {n_name} (at most all features active); "
                         f"got {k_name}={k}, {n_name}={n}")


def float_array(
    name: str, x: Any, *, ndims: Sequence[int], finite: bool = True
) -> jax.Array:
    """Converts ``x`` to a floating JAX array and checks its rank and (if concrete) its values.

    Args:
      name: argument name used in error messages.
      x: array-like.
      ndims: allowed numbers of dimensions.
      finite: if True, reject NaN/Inf (only checked when ``x`` is concrete).
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}")
    try:
        arr = jnp.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric array: {err}") from None
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
            or arr.dtype == jnp.bool_):
        raise TypeError(f"{name} must have a real floating dtype, got {arr.dtype}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if arr.ndim not in ndims:
        want = " or ".join(str(d) for d in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(arr.shape)}")
    if any(s == 0 for s in arr.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    if finite and violates(arr, jnp.isfinite):
        bad = int(np.size(arr) - np.sum(np.isfinite(np.asarray(arr))))
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); clean the data first")
    return arr


def same_size(name_a: str, size_a: int, name_b: str, size_b: int) -> None:
    """Checks that two sizes that must match do match."""
    if size_a != size_b:
        raise ValueError(f"{name_a} ({size_a}) must equal {name_b} ({size_b})")


def int_labels(labels: Any, rows: int, classes: int | None = None) -> jax.Array:
    """Returns ``labels`` as an array after checking it holds ``rows`` integers (in
    [0, ``classes``) when given)."""
    labels = jnp.asarray(labels)
    if labels.shape != (rows,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers of shape ({rows},), got "
                         f"{labels.dtype} {labels.shape}")
    if classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels
