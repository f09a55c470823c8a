"""Ridge-sum targets f(x) = Σ_i a_i σ_i(v_iᵀx) and a query-counting, noisy oracle.

A :class:`Target` is a pytree (directions, weights, response kinds and parameters), evaluated by the
pure, jittable :func:`evaluate`. :func:`sample_target` draws the benchmark families of
``../shared/science/query-recovery.md`` §7. An :class:`Oracle` is the only host-side object of the
query-recovery stack: it answers batches of query points, adds noise relative to std(f), counts
every query and refuses to exceed its budget. :meth:`Oracle.from_callable` wraps any function on
arrays (a unit or logit of a real model) the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from superjax import _checks

#: Response families; the last three are the degenerate polynomial controls.
RESPONSES = ("relu", "tanh", "sigmoid", "sin", "bump", "abs", "linear", "quadratic", "cubic")
NON_DEGENERATE = RESPONSES[:6]
#: Families accepted by ``sample_target(responses=...)``; "mixed" draws relu, tanh, sin and bump.
RESPONSE_MIXES = {
    "mixed": ("relu", "tanh", "sin", "bump"),
    "relu": ("relu",), "tanh": ("tanh",), "sigmoid": ("sigmoid",), "sin": ("sin",),
    "bump": ("bump",), "abs": ("abs",),
}
DIRECTION_FAMILIES = ("uniform", "clustered")


class Target(NamedTuple):
    """f(x) = Σ_i weights_i · σ_{kinds_i}(directions_i · x; scales_i, shifts_i)."""

    directions: Float[Array, "n d"]
    weights: Float[Array, " n"]
    kinds: Int[Array, " n"]     # index into RESPONSES
    scales: Float[Array, " n"]  # slope α, frequency ω, or bump width
    shifts: Float[Array, " n"]  # offset b

    @property
    def degenerate(self) -> Float[Array, " n"]:
        """Mask of features whose response is a low-degree polynomial (not identifiable)."""
        return self.kinds >= len(NON_DEGENERATE)


def responses(kinds: Int[Array, " n"], scales, shifts, z: Float[Array, "... n"]) -> Array:
    """σ_i(z_i) for every response family, selected per feature by ``kinds``."""
    a, b = scales, shifts
    table = [
        jax.nn.relu(z - b),
        jnp.tanh(a * z + b),
        jax.nn.sigmoid(a * z + b),
        jnp.sin(a * z + b),
        jnp.exp(-0.5 * ((z - b) / a) ** 2),
        jnp.abs(z - b),
        z,
        z**2 - 1.0,
        z**3 - 3.0 * z,
    ]
    return jnp.select([kinds == i for i in range(len(table))], table)


@jax.jit
def evaluate(target: Target, x: Float[Array, "... d"]) -> Float[Array, "..."]:
    """f(x) for a batch of points (pure; jit/vmap friendly)."""
    z = x @ target.directions.T
    return responses(target.kinds, target.scales, target.shifts, z) @ target.weights


def _uniform_directions(key, n: int, d: int) -> Array:
    v = jax.random.normal(key, (n, d))
    return v / jnp.linalg.norm(v, axis=1, keepdims=True)


def clustered_directions(key, n: int, d: int, delta: float, group: int = 2) -> Float[Array, "n d"]:
    """Unit directions in groups of ``group`` with pairwise angle exactly ``delta`` (radians).

    Members are c·cos θ + u_j·sin θ with orthonormal u_j ⟂ c, so the pairwise angle is δ when
    sin²θ = (1 − cos δ) (two members: θ = δ/2). Groups have independent random centres.
    """
    n_groups = -(-n // group)
    kc, ku = jax.random.split(key)
    centres = _uniform_directions(kc, n_groups, d)
    raw = jax.random.normal(ku, (n_groups, d, group))
    raw = raw - centres[:, :, None] * jnp.einsum("gd,gdk->gk", centres, raw)[:, None, :]
    u, _ = jnp.linalg.qr(raw)                                   # (groups, d, group) orthonormal ⟂ c
    sin_t = jnp.sqrt(1.0 - jnp.cos(delta))
    v = centres[:, None, :] * jnp.sqrt(1.0 - sin_t**2) + jnp.swapaxes(u, 1, 2) * sin_t
    return v.reshape(-1, d)[:n]


def sample_target(
    key, d: int, n: int, *, responses: str = "mixed", directions: str = "uniform",
    delta: float = 0.3, degenerate: int = 0,
) -> Target:
    """Draws a benchmark target (§7 of query-recovery.md).

    Args:
      key: PRNG key.
      d, n: input dimension and number of non-degenerate features (n > d is superposition).
      responses: one of ``RESPONSE_MIXES`` (``"mixed"``: ReLU, tanh, sin and Gaussian bumps).
      directions: ``"uniform"`` on the sphere, or ``"clustered"`` in pairs at angle ``delta``.
      delta: pairwise angle (radians) inside a cluster.
      degenerate: extra degenerate controls appended (z, z², z³ in turn), on fresh directions.
    """
    d = _checks.positive_int("d", d, minimum=2)
    n = _checks.positive_int("n", n)
    degenerate = _checks.positive_int("degenerate", degenerate, minimum=0)
    _checks.one_of("responses", responses, RESPONSE_MIXES)
    _checks.one_of("directions", directions, DIRECTION_FAMILIES)
    delta = _checks.real_number("delta", delta, minimum=0.0, maximum=np.pi / 2, strict_min=True)
    kd, kk, ka, kb, kw, ks, kg = jax.random.split(key, 7)
    total = n + degenerate
    if directions == "uniform":
        v = _uniform_directions(kd, total, d)
    else:
        v = jnp.concatenate([clustered_directions(kd, n, d, delta),
                             _uniform_directions(kg, degenerate, d)])[:total]
    mix = jnp.array([RESPONSES.index(r) for r in RESPONSE_MIXES[responses]])
    kinds = mix[jax.random.randint(kk, (n,), 0, len(mix))]
    controls = jnp.array([6, 7, 8])[jnp.arange(degenerate) % 3]
    kinds = jnp.concatenate([kinds, controls]).astype(jnp.int32)
    u = jax.random.uniform(ka, (total,))
    # tanh/sigmoid slope and sin frequency in [1, 2]; bump width in [0.5, 1].
    scales = jnp.where(kinds == 4, 0.5, 1.0) * (1.0 + u)
    shifts = jax.random.uniform(kb, (total,), minval=-1.0, maxval=1.0)
    shifts = jnp.where(kinds == 3, shifts * jnp.pi, shifts)
    sign = jnp.where(jax.random.bernoulli(kw, 0.5, (total,)), 1.0, -1.0)
    weights = sign * jax.random.uniform(ks, (total,), minval=0.5, maxval=1.5)
    return Target(v, weights, kinds, scales, shifts)


def validate_target(target: Target, *, min_separation: float = 1e-3) -> Target:
    """Checks a user target: unit directions, no duplicate lines, consistent sizes, known kinds."""
    v = np.asarray(_checks.float_array("target.directions", target.directions, ndims=(2,)))
    n, _ = v.shape
    for name in ("weights", "kinds", "scales", "shifts"):
        arr = np.asarray(getattr(target, name))
        if arr.shape != (n,):
            raise ValueError(f"target.{name} must have shape ({n},) to match directions; "
                             f"got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"target.{name} contains NaN or Inf")
    norms = np.linalg.norm(v, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-4)
    if bad.size:
        raise ValueError(f"target directions must be unit vectors; direction {bad[0]} has norm "
                         f"{norms[bad[0]]:.6g} (normalise them and fold the scale into the "
                         "response)")
    kinds = np.asarray(target.kinds)
    if np.any((kinds < 0) | (kinds >= len(RESPONSES))):
        raise ValueError(f"target.kinds must index {RESPONSES}; got values {np.unique(kinds)}")
    cos = np.abs(v @ v.T) - 2.0 * np.eye(n)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))  # min(‖vi − vj‖, ‖vi + vj‖)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    if n > 1 and dist[i, j] < min_separation:
        raise ValueError(f"target directions {i} and {j} are duplicates up to sign "
                         f"(min(‖vi − vj‖, ‖vi + vj‖) = {dist[i, j]:.2e} < {min_separation:g}); "
                         "merge them into one feature")
    return target


class QueryBudgetExceeded(ValueError):
    """Raised when a query batch would take an oracle past its budget."""


class Oracle:
    """Answers f(x) + noise for batches of query points, counting every query.

    Args:
      fn: maps an array (batch, d) to (batch,) values; jitted when ``jit`` is True.
      d: input dimension.
      noise: noise standard deviation relative to std(f) under x ~ N(0, I_d).
      budget: maximum number of queries (None: unlimited).
      key: PRNG key for the noise.
      jit: compile ``fn`` (False for host callables such as a PyTorch model).
    """

    def __init__(self, fn: Callable, d: int, *, noise: float = 0.0, budget: int | None = None,
                 key=None, jit: bool = True):
        self.d = _checks.positive_int("d", d)
        self.noise = _checks.real_number("noise", noise, minimum=0.0)
        self.budget = None if budget is None else _checks.positive_int("budget", budget)
        self._fn = jax.jit(fn) if jit else fn
        self._key = jax.random.key(0) if key is None else key
        self.queries = 0
        self._calls = 0
        probe = jax.random.normal(jax.random.key(12345), (4096, self.d))
        # not counted: defines the noise scale
        self.f_std = float(np.std(self._raw(probe, "the 4096 probe points that set the noise "
                                                   "scale")))

    @classmethod
    def from_target(cls, target: Target, **kwargs) -> Oracle:
        """An oracle for a ridge-sum :class:`Target` (validated first)."""
        validate_target(target)
        return cls(jax.tree_util.Partial(evaluate, target), target.directions.shape[1], **kwargs)

    @classmethod
    def from_callable(cls, fn: Callable, d: int, **kwargs) -> Oracle:
        """Wraps any callable on (batch, d) arrays, e.g. a real network's unit or logit."""
        kwargs.setdefault("jit", False)
        return cls(lambda x: jnp.asarray(np.asarray(fn(x)), jnp.float32), d, **kwargs)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries

    def _raw(self, x, where: str | None = None) -> Array:
        try:
            y = jnp.asarray(self._fn(x))
        except (TypeError, ValueError) as err:
            raise ValueError(f"the oracle function failed on query points of shape "
                             f"{tuple(x.shape)} (is its input dimension d = {self.d}?): "
                             f"{err}") from None
        if y.shape != (x.shape[0],):
            raise ValueError(f"the oracle function must return shape ({x.shape[0]},) for "
                             f"{x.shape[0]} query points; got {tuple(y.shape)}")
        if _checks.violates(y, jnp.isfinite):
            bad = int(jnp.sum(~jnp.isfinite(y)))
            raise ValueError(f"the oracle function returned {bad} NaN/Inf value(s) on "
                             f"{where or f'query batch {self._calls}'}")
        return y

    def __call__(self, x: Float[Array, "batch d"]) -> Float[Array, " batch"]:
        """f(x) + η·std(f)·ξ for each row of ``x``; counts the queries."""
        x = _checks.float_array("query points", x, ndims=(2,))
        if x.shape[1] != self.d:
            raise ValueError(f"query points have dimension {x.shape[1]} but the oracle takes "
                             f"d = {self.d}")
        if self.budget is not None and self.queries + x.shape[0] > self.budget:
            raise QueryBudgetExceeded(
                f"query budget exhausted: {self.queries} used + {x.shape[0]} requested > budget "
                f"{self.budget}; raise --budget or lower the accuracy asked for")
        y = self._raw(x)
        self.queries += x.shape[0]
        self._calls += 1
        if self.noise > 0:
            xi = jax.random.normal(jax.random.fold_in(self._key, self._calls), y.shape)
            y = y + (self.noise * self.f_std) * xi
        return y
