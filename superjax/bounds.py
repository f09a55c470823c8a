"""Compressed-sensing limits: when can K-sparse codes be recovered from M measurements at all?

Notation: N features, M measurements (neurons), K active; δ = M/N, ρ = K/M, ε = K/N.

* Donoho–Tanner weak threshold ρ_W(δ) (typical K-sparse vector, Gaussian matrix, L1 recovery),
  computed from the AMP state-evolution formula (Donoho, Maleki & Montanari, PNAS 2009)

      ρ_W(δ) = max_{t≥0} [1 − (κ/δ) J(t)] / [1 + t² − κ J(t)],  J(t) = (1 + t²)Φ(−t) − tφ(t),

  with κ = 2 for signed codes (cross-polytope) and κ = 1 for non-negative codes (simplex).
* The statistical dimension of the L1 descent cone (Amelunxen, Lotz, McCoy & Tropp 2014),
  ψ(ε) = inf_{t≥0} ε(1 + t²) + (1 − ε) κ J(t), gives the minimal M ≈ N ψ(K/N). It is the same
  curve read the other way: ρ_W(ψ(ε)) = ε / ψ(ε).
* Order-of-magnitude uniform bound K log(N/K), mutual coherence, the Welch bound and the
  coherence guarantee K < (1 + 1/μ)/2, and a Monte-Carlo restricted-isometry estimate.

Everything here is pure JAX (jit/vmap-able over δ or ε) except :func:`recovery_bounds`, the
host-side summary used by the CLI.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm
from jaxtyping import Array, Float, PRNGKeyArray

from superjax import _checks

_T_MAX = 20.0  # optimum t ≈ sqrt(2 ln(1/δ)) < 20 for every δ ≥ 1e-80
_GRID = 1025
_GOLDEN_STEPS = 60


def _in_unit_interval(v: Array) -> Array:
    return (v > 0) & (v <= 1)


def _unit_interval(name: str, x) -> Array:
    """x as a float array; concrete values must lie in (0, 1]."""
    x = _checks.float_array(name, x, ndims=range(8))
    if _checks.violates(x, _in_unit_interval):
        host = np.asarray(x)
        raise ValueError(f"{name} must lie in (0, 1] (a ratio of sizes), got values in "
                         f"[{host.min():g}, {host.max():g}]")
    return x


def _kappa(signed: bool) -> float:
    return 2.0 if signed else 1.0


def gaussian_tail_moment(t: Float[Array, "..."]) -> Float[Array, "..."]:
    """J(t) = E[(g − t)₊²] = (1 + t²)Φ(−t) − tφ(t) for g ~ N(0, 1)."""
    return (1.0 + t**2) * norm.cdf(-t) - t * norm.pdf(t)


def _golden_argmax(f, lo: Array, hi: Array) -> Array:
    """Maximiser of a unimodal f on [lo, hi] by golden-section search (fixed step count)."""
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0

    def body(_, bracket):
        a, b = bracket
        c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
        left = f(c) >= f(d)
        return jnp.where(left, a, c), jnp.where(left, d, b)

    a, b = jax.lax.fori_loop(0, _GOLDEN_STEPS, body, (lo, hi))
    return 0.5 * (a + b)


def _maximise(f, dtype) -> Array:
    """max_{t ∈ [0, _T_MAX]} f(t): a grid locates the peak, golden section polishes it."""
    grid = jnp.linspace(0.0, _T_MAX, _GRID, dtype=dtype)
    i = jnp.argmax(f(grid))
    step = grid[1] - grid[0]
    lo = jnp.maximum(grid[i] - step, 0.0)
    t = _golden_argmax(f, lo, grid[i] + step)
    return jnp.maximum(f(t), f(grid[i]))


def rho_weak(delta: Float[Array, "..."] | float, signed: bool = False) -> Float[Array, "..."]:
    """Donoho–Tanner weak threshold ρ_W(δ) for L1 recovery.

    Args:
      delta: undersampling ratio M/N in (0, 1] (any shape; evaluated elementwise).
      signed: signed codes (κ = 2, cross-polytope) or non-negative codes solved with z ≥ 0
        (κ = 1, simplex).

    Returns:
      ρ_W(δ): L1 recovers a typical K-sparse code w.h.p. when K/M < ρ_W(δ), fails when above.

    Reference: Donoho & Tanner, "Counting faces of randomly projected polytopes when the
    projection radically lowers dimension", JAMS 2009; state-evolution formula from Donoho,
    Maleki & Montanari, PNAS 2009.
    """
    return _rho_weak(_unit_interval("delta", delta), signed)


def _sup_over_t(x, objective):
    """Elementwise sup_{t ≥ 0} objective(x, t) over an array x of ratios."""
    return jnp.vectorize(lambda v: _maximise(lambda t: objective(v, t), v.dtype))(x)


@functools.partial(jax.jit, static_argnames="signed")
def _rho_weak(delta, signed):
    kappa = _kappa(signed)

    def ratio(d, t):
        j = kappa * gaussian_tail_moment(t)
        return (1.0 - j / d) / (1.0 + t**2 - j)

    return jnp.clip(_sup_over_t(delta, ratio), 0.0, 1.0)


def statistical_dimension(
    eps: Float[Array, "..."] | float, signed: bool = False
) -> Float[Array, "..."]:
    """ψ(ε) = δ(L1 descent cone)/N at a K-sparse point, ε = K/N.

    ψ(ε) = inf_{t ≥ 0} ε(1 + t²) + (1 − ε) κ J(t); the phase transition sits at M = N ψ(ε).
    Reference: Amelunxen, Lotz, McCoy & Tropp, "Living on the edge", Inf. Inference 2014, Prop. 4.5.
    """
    return _statistical_dimension(_unit_interval("eps", eps), signed)


@functools.partial(jax.jit, static_argnames="signed")
def _statistical_dimension(eps, signed):
    kappa = _kappa(signed)

    def neg(e, t):
        return -(e * (1.0 + t**2) + (1.0 - e) * kappa * gaussian_tail_moment(t))

    return jnp.clip(-_sup_over_t(eps, neg), 0.0, 1.0)


def rho_weak_small_delta(delta: Float[Array, "..."] | float) -> Float[Array, "..."]:
    """Small-δ asymptote ρ_W ≈ 1 / (2 ln(1/δ)) (both sign cases; accurate only for δ ≲ 0.02)."""
    return 1.0 / (2.0 * jnp.log(1.0 / _unit_interval("delta", delta)))


def min_measurements(n: int, k: int, signed: bool = False) -> int:
    """Minimal M for typical L1 recovery of K-sparse codes in dimension N: ⌈N ψ(K/N)⌉."""
    _checks.sparsity(k, n)
    return int(math.ceil(n * float(statistical_dimension(k / n, signed)) - 1e-6))


def k_log_n_over_k(n: int, k: int) -> float:
    """Order-of-magnitude uniform (RIP) bound K·ln(N/K); the constant is unspecified."""
    _checks.sparsity(k, n)
    return k * math.log(n / k)


def mutual_coherence(dictionary: Float[Array, "m n"]) -> Float[Array, ""]:
    """μ(A) = max_{i≠j} |⟨a_i, a_j⟩| / (‖a_i‖‖a_j‖)."""
    dictionary = _checks.float_array("dictionary", dictionary, ndims=(2,))
    _checks.positive_int("dictionary columns (N)", dictionary.shape[1], minimum=2)
    a = dictionary / jnp.linalg.norm(dictionary, axis=0, keepdims=True)
    gram = jnp.abs(a.T @ a)
    return jnp.max(jnp.where(jnp.eye(gram.shape[0], dtype=bool), 0.0, gram))


def welch_bound(m: int, n: int) -> float:
    """Lower bound on the coherence of any N unit vectors in R^M: sqrt((N − M) / (M (N − 1)))."""
    _checks.positive_int("m", m)
    _checks.positive_int("n", n, minimum=2)
    return math.sqrt(max(n - m, 0) / (m * (n - 1)))


def coherence_sparsity_limit(mu: float | Float[Array, ""]) -> Float[Array, ""]:
    """Classical guarantee: OMP and L1 recover every K-sparse code when K < (1 + 1/μ)/2.

    Reference: Donoho & Elad, PNAS 2003; Tropp, IEEE Trans. Inf. Theory 2004.
    """
    return 0.5 * (1.0 + 1.0 / _unit_interval("mu", mu))


class RIPEstimate(NamedTuple):
    """Monte-Carlo restricted-isometry estimate over random K-column submatrices.

    ``delta_k`` is a LOWER bound on the true RIP constant δ_K (the max over all supports).
    """

    delta_k: Float[Array, ""]
    sigma_min_sq: Float[Array, " trials"]
    sigma_max_sq: Float[Array, " trials"]


def rip_estimate(
    key: PRNGKeyArray, dictionary: Float[Array, "m n"], k: int, trials: int = 1000
) -> RIPEstimate:
    """Estimates δ_K = max_S max(σ_max²(A_S) − 1, 1 − σ_min²(A_S)) from random supports S, |S|=K."""
    dictionary = _checks.float_array("dictionary", dictionary, ndims=(2,))
    m, n = dictionary.shape
    _checks.sparsity(k, n)
    _checks.positive_int("trials", trials)
    keys = jax.random.split(key, trials)
    cols = jax.vmap(lambda kk: jax.random.choice(kk, n, (k,), replace=False))(keys)
    sv = jax.vmap(lambda c: jnp.linalg.svd(dictionary[:, c], compute_uv=False))(cols)
    # With K > M the smallest singular value of A_S is 0 (k-th of min(m, k) values is missing).
    smin = jnp.where(k > m, 0.0, sv[:, -1] ** 2)
    smax = sv[:, 0] ** 2
    return RIPEstimate(jnp.max(jnp.maximum(smax - 1.0, 1.0 - smin)), smin, smax)


class BoundsReport(NamedTuple):
    """Everything the theory says about recovering K-sparse codes of N features from M neurons."""

    m: int
    n: int
    k: int
    signed: bool
    delta: float
    rho: float
    rho_weak: float
    recoverable: bool
    m_min: int
    k_max: int
    k_log_n_over_k: float
    welch_bound: float
    coherence_k_limit_at_welch: float
    rho_weak_small_delta: float


def recovery_bounds(m: int, n: int, k: int, signed: bool = False) -> BoundsReport:
    """Summary of the recovery limits for (M, N, K); ``recoverable`` means ρ < ρ_W(δ).

    ``k_max`` is the largest K with K/M < ρ_W(δ) at this (M, N); ``coherence_k_limit_at_welch`` is
    the coherence guarantee evaluated at the best coherence any dictionary could have (Welch).
    """
    _checks.positive_int("m", m)
    _checks.sparsity(k, n)
    if m > n:
        raise ValueError(f"m must be <= n (superposition/undersampling, δ = m/n ≤ 1); "
                         f"got m={m}, n={n}")
    delta, rho = m / n, k / m
    rw = float(rho_weak(delta, signed))
    welch = welch_bound(m, n) if n > 1 else 0.0
    return BoundsReport(
        m=m, n=n, k=k, signed=signed, delta=delta, rho=rho, rho_weak=rw,
        recoverable=bool(rho < rw), m_min=min_measurements(n, k, signed),
        k_max=max(int(math.ceil(rw * m)) - 1, 0), k_log_n_over_k=k_log_n_over_k(n, k),
        welch_bound=welch,
        coherence_k_limit_at_welch=float(coherence_sparsity_limit(welch)) if welch > 0 else
        math.inf,
        rho_weak_small_delta=float(rho_weak_small_delta(delta)) if delta < 1 else math.nan,
    )
