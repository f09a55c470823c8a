"""Sparse coding with a fixed dictionary: ISTA/FISTA, OMP, least-squares debiasing, basis pursuit.

Objective (per sample y ∈ R^M, dictionary D ∈ R^{M×N}):

    min_z  ½‖y − D z‖² + λ‖z‖₁          (optionally subject to z ≥ 0)

Every solver takes one sample ``y`` of shape (M,) or a batch of shape (B, M); batches are solved by
``jax.vmap`` of the single-sample algorithm, so each sample stops on its own tolerance and gets
exactly the answer it would get alone. Solvers are pure and jit-able (hyperparameters that fix
shapes or control flow, such as ``max_iter`` or ``nonneg``, must be static under ``jax.jit``).
Results are NamedTuples carrying convergence information.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from superjax import _checks

_TINY = 1e-30


class SparseCodingResult(NamedTuple):
    """Output of an L1 solver; leading batch dimensions follow ``y``.

    Attributes:
      codes: solution z, shape (..., N).
      objective: ½‖y − Dz‖² + λ‖z‖₁ at ``codes``, shape (...).
      gap: certified bound on the suboptimality, objective − (a dual value) ≥ objective − min,
        shape (...). (Basis pursuit: the last relative ADMM residual instead.)
      iterations: iterations taken, shape (...).
      converged: gap ≤ tol·objective, shape (...).
      trace: objective after every iteration, shape (..., max_iter) (NaN after stopping), or None.
    """

    codes: Float[Array, "*b n"]
    objective: Float[Array, "*b"]
    gap: Float[Array, "*b"]
    iterations: Int[Array, "*b"]
    converged: Bool[Array, "*b"]
    trace: Float[Array, "*b t"] | None


class OMPResult(NamedTuple):
    """Output of orthogonal matching pursuit.

    Attributes:
      codes: least-squares coefficients on the selected atoms, shape (..., N).
      support: selected atom indices in order of selection, -1 where nothing was selected, (..., K).
      residual_norm: ‖y − D z‖, shape (...).
      n_selected: number of atoms selected (K unless the residual fell below ``tol``), shape (...).
    """

    codes: Float[Array, "*b n"]
    support: Int[Array, "*b k"]
    residual_norm: Float[Array, "*b"]
    n_selected: Int[Array, "*b"]


# --------------------------------------------------------------------------------------------
# Building blocks


def lasso_objective(
    dictionary: Float[Array, "m n"], y: Float[Array, "*b m"], codes: Float[Array, "*b n"], lam
) -> Float[Array, "*b"]:
    """½‖y − D z‖² + λ‖z‖₁ per sample."""
    residual = codes @ dictionary.T - y
    return 0.5 * jnp.sum(residual**2, axis=-1) + lam * jnp.sum(jnp.abs(codes), axis=-1)


def lipschitz_constant(dictionary: Float[Array, "m n"]) -> Float[Array, ""]:
    """L = ‖D‖₂², the Lipschitz constant of the gradient of ½‖y − D z‖²."""
    return jnp.linalg.norm(dictionary, ord=2) ** 2


def soft_threshold(v: Float[Array, "..."], threshold, nonneg: bool = False) -> Float[Array, "..."]:
    """Proximal map of threshold·‖·‖₁ (plus the indicator of z ≥ 0 when ``nonneg``)."""
    if nonneg:
        return jnp.maximum(v - threshold, 0.0)
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - threshold, 0.0)


def _validate(dictionary, y, init=None):
    dictionary = _checks.float_array("dictionary", dictionary, ndims=(2,))
    y = _checks.float_array("y", y, ndims=(1, 2))
    _checks.same_size("y's last dimension", y.shape[-1], "dictionary rows (M)", dictionary.shape[0])
    if init is not None:
        init = _checks.float_array("init", init, ndims=(y.ndim,))
        want = y.shape[:-1] + (dictionary.shape[1],)
        if init.shape != want:
            raise ValueError(f"init must have shape {want} (batch of N-vectors), got {init.shape}")
    return dictionary, y, init


def _check_lam(lam, batch_shape):
    if isinstance(lam, (int, float)) or jnp.ndim(lam) == 0:
        if _checks.is_concrete(lam):
            _checks.real_number("lam", float(lam), minimum=0.0)
        return jnp.broadcast_to(jnp.asarray(lam, dtype=jnp.result_type(float)), batch_shape)
    lam = jnp.asarray(lam)
    if lam.shape != batch_shape:
        raise ValueError(f"lam must be a scalar or have the batch shape {batch_shape}, "
                         f"got shape {lam.shape}")
    if _checks.is_concrete(lam) and not bool(jnp.all(jnp.isfinite(lam) & (lam >= 0))):
        raise ValueError("lam must be finite and >= 0 for every sample")
    return lam


def _batched(single, y, *args):
    """Applies a single-sample solver to y of shape (M,) or (B, M); args are per-sample arrays."""
    if y.ndim == 1:
        return single(y, *args)
    return jax.vmap(single)(y, *args)


# --------------------------------------------------------------------------------------------
# ISTA / FISTA


class _FistaState(NamedTuple):
    z: Array  # current iterate
    rz: Array  # D z − y
    x: Array  # extrapolated (momentum) point
    rx: Array  # D x − y
    t: Array  # FISTA momentum parameter
    k: Array  # iterations done
    objective: Array  # primal objective P(z)
    gap: Array  # P(z) − D(θ) ≥ P(z) − P*, θ the dual point from x's residual


def _fista_init(dictionary, y, z0, lam) -> _FistaState:
    rz = dictionary @ z0 - y
    obj = 0.5 * jnp.sum(rz**2) + lam * jnp.sum(jnp.abs(z0))
    one = jnp.ones((), y.dtype)
    return _FistaState(z0, rz, z0, rz, one, jnp.zeros((), jnp.int32), obj, jnp.inf * one)


def _dual_value(y, residual, correlation, lam, nonneg):
    """Lasso dual D(θ) = θᵀy − ½‖θ‖² at θ = s·r, r = y − Dx, scaled into the dual feasible set.

    Feasible set: ‖Dᵀθ‖_∞ ≤ λ (signed) or Dᵀθ ≤ λ (z ≥ 0); ``correlation`` is Dᵀr. By weak
    duality D(θ) ≤ P* for every feasible θ, so P(z) − D(θ) bounds the suboptimality of z.
    """
    peak = jnp.max(correlation) if nonneg else jnp.max(jnp.abs(correlation))
    scale = jnp.where(peak > lam, lam / jnp.where(peak > lam, peak, 1.0), 1.0)
    theta = scale * residual
    return jnp.vdot(theta, y) - 0.5 * jnp.vdot(theta, theta)


def _fista_step(dictionary, y, lam, step, nonneg, accelerated, restart, s: _FistaState):
    """One proximal-gradient step from the momentum point (Beck & Teboulle 2009).

    D x is never recomputed: x = z + β(z − z_prev) is linear, so D x − y follows from the two
    residuals already known. One product with D and one with Dᵀ per iteration; the duality gap
    reuses the gradient Dᵀ(Dx − y), so it is free.
    """
    grad = dictionary.T @ s.rx
    z = soft_threshold(s.x - step * grad, lam * step, nonneg)
    rz = dictionary @ z - y
    if accelerated:
        t = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * s.t**2))
        beta = (s.t - 1.0) / t
        if restart:
            # Gradient restart (O'Donoghue & Candès 2015): drop momentum when it points uphill.
            uphill = jnp.vdot(s.x - z, z - s.z) > 0
            t, beta = jnp.where(uphill, 1.0, t), jnp.where(uphill, 0.0, beta)
    else:
        t, beta = s.t, jnp.zeros_like(s.t)
    objective = 0.5 * jnp.sum(rz**2) + lam * jnp.sum(jnp.abs(z))
    gap = objective - _dual_value(y, -s.rx, -grad, lam, nonneg)
    return _FistaState(z, rz, z + beta * (z - s.z), rz + beta * (rz - s.rz), t, s.k + 1,
                       objective, gap)


def _converged(s: _FistaState, tol):
    return s.gap <= tol * s.objective


def fista(
    dictionary: Float[Array, "m n"],
    y: Float[Array, "*b m"],
    lam: float | Float[Array, "*b"],
    *,
    init: Float[Array, "*b n"] | None = None,
    nonneg: bool = False,
    max_iter: int = 1000,
    tol: float = 1e-5,
    accelerated: bool = True,
    restart: bool = True,
    trace: bool = False,
    lipschitz: float | Float[Array, ""] | None = None,
) -> SparseCodingResult:
    """FISTA for the Lasso, stopped when the relative duality gap falls below ``tol``.

    Minimises ½‖y − Dz‖² + λ‖z‖₁ (subject to z ≥ 0 if ``nonneg``) with step 1/L, L = ‖D‖₂².

    Args:
      dictionary: D, shape (M, N).
      y: one sample (M,) or a batch (B, M).
      lam: λ ≥ 0, a scalar or one per sample.
      init: warm start, shape (..., N); zeros by default.
      nonneg: constrain z ≥ 0.
      max_iter: iteration cap (static).
      tol: stop when the duality gap certifies P(z) − P* ≤ tol·P(z) (relative suboptimality).
        Float32 resolves down to about 1e-6.
      accelerated: FISTA momentum; False gives ISTA.
      restart: adaptive gradient restart of the momentum (faster on strongly convex pieces).
      trace: also return the objective after every iteration (memory B × max_iter).
      lipschitz: ‖D‖₂² if already known (saves an SVD per call).

    Returns:
      :class:`SparseCodingResult`.

    Reference: A. Beck and M. Teboulle, "A fast iterative shrinkage-thresholding algorithm for
    linear inverse problems", SIAM J. Imaging Sci. 2009.
    """
    dictionary, y, init = _validate(dictionary, y, init)
    max_iter = _checks.positive_int("max_iter", max_iter)
    tol = _checks.real_number("tol", tol, minimum=0.0)
    lam = _check_lam(lam, y.shape[:-1])
    step = 1.0 / (lipschitz_constant(dictionary) if lipschitz is None else lipschitz)
    z0 = jnp.zeros(y.shape[:-1] + (dictionary.shape[1],), y.dtype) if init is None else init

    def single(yi, z0i, lami):
        state = _fista_init(dictionary, yi, z0i, lami)
        buf = jnp.full((max_iter,), jnp.nan, yi.dtype) if trace else None

        def cond(carry):
            s, _ = carry
            return (s.k < max_iter) & ~_converged(s, tol)

        def body(carry):
            s, b = carry
            s = _fista_step(dictionary, yi, lami, step, nonneg, accelerated, restart, s)
            return s, (None if b is None else b.at[s.k - 1].set(s.objective))

        s, buf = jax.lax.while_loop(cond, body, (state, buf))
        return SparseCodingResult(s.z, s.objective, s.gap, s.k, _converged(s, tol), buf)

    return _batched(single, y, z0, lam)


def ista(dictionary, y, lam, **kwargs) -> SparseCodingResult:
    """ISTA (proximal gradient without momentum); same arguments as :func:`fista`."""
    return fista(dictionary, y, lam, accelerated=False, restart=False, **kwargs)


def fista_fixed(
    dictionary: Float[Array, "m n"],
    y: Float[Array, "*b m"],
    lam: float | Float[Array, "*b"],
    num_iter: int,
    *,
    init: Float[Array, "*b n"] | None = None,
    nonneg: bool = False,
    accelerated: bool = True,
    restart: bool = False,
    lipschitz: float | Float[Array, ""] | None = None,
) -> SparseCodingResult:
    """Exactly ``num_iter`` FISTA (or ISTA) iterations with a ``lax.scan``: differentiable.

    Same objective and arguments as :func:`fista`; the trace (objective per iteration) is always
    returned and ``converged`` reports whether the last fixed-point residual was below 1e-6.
    """
    dictionary, y, init = _validate(dictionary, y, init)
    num_iter = _checks.positive_int("num_iter", num_iter)
    lam = _check_lam(lam, y.shape[:-1])
    step = 1.0 / (lipschitz_constant(dictionary) if lipschitz is None else lipschitz)
    z0 = jnp.zeros(y.shape[:-1] + (dictionary.shape[1],), y.dtype) if init is None else init

    def single(yi, z0i, lami):
        def body(s, _):
            s = _fista_step(dictionary, yi, lami, step, nonneg, accelerated, restart, s)
            return s, s.objective

        s, objectives = jax.lax.scan(body, _fista_init(dictionary, yi, z0i, lami), None, num_iter)
        return SparseCodingResult(s.z, s.objective, s.gap, s.k, _converged(s, 1e-6), objectives)

    return _batched(single, y, z0, lam)


# --------------------------------------------------------------------------------------------
# Support-based methods: OMP and least-squares debiasing


def _support_least_squares(dictionary, y, idx, valid):
    """Least squares of y on the atoms idx[valid]; invalid slots get coefficient 0.

    Padded normal equations keep the shape static: invalid slots get an identity block.
    """
    atoms = dictionary[:, idx] * valid
    gram = atoms.T @ atoms + jnp.diag(jnp.where(valid, 0.0, 1.0))
    coef = jnp.linalg.solve(gram, atoms.T @ y) * valid
    return coef, y - atoms @ coef


def omp(
    dictionary: Float[Array, "m n"], y: Float[Array, "*b m"], k: int, *, tol: float = 0.0
) -> OMPResult:
    """Orthogonal matching pursuit: K greedy selections, least-squares refit after each.

    Each step selects the atom most correlated with the residual, argmax_j |d_jᵀ r|, then refits
    y on all selected atoms. Stops early once ‖r‖ ≤ ``tol``. Atoms should have unit norm.

    Reference: Pati, Rezaiifar & Krishnaprasad 1993; Tropp & Gilbert, IEEE Trans. IT 2007.
    """
    dictionary, y, _ = _validate(dictionary, y)
    m, n = dictionary.shape
    k = _checks.positive_int("k", k)
    _checks.sparsity(k, n, n_name="dictionary columns (N)")
    if k > m:
        raise ValueError(f"k must be <= M = {m} (least squares on more atoms than measurements "
                         f"is underdetermined); got k={k}")
    tol = _checks.real_number("tol", tol, minimum=0.0)

    def single(yi):
        def body(i, carry):
            support, chosen, count, r = carry
            go = jnp.linalg.norm(r) > tol
            corr = jnp.where(chosen, -1.0, jnp.abs(dictionary.T @ r))
            j = jnp.argmax(corr)
            support = jnp.where(go, support.at[i].set(j), support)
            chosen = jnp.where(go, chosen.at[j].set(True), chosen)
            count = count + go
            coef, r = _support_least_squares(dictionary, yi, jnp.maximum(support, 0),
                                             jnp.arange(k) < count)
            return support, chosen, count, r

        init = (jnp.full((k,), -1), jnp.zeros((n,), bool), jnp.zeros((), jnp.int32), yi)
        support, _, count, _ = jax.lax.fori_loop(0, k, body, init)
        valid = jnp.arange(k) < count
        coef, r = _support_least_squares(dictionary, yi, jnp.maximum(support, 0), valid)
        codes = jnp.zeros((n,), yi.dtype).at[jnp.maximum(support, 0)].add(coef)
        return OMPResult(codes, support, jnp.linalg.norm(r), count)

    return _batched(single, y)


def debias(
    dictionary: Float[Array, "m n"],
    y: Float[Array, "*b m"],
    codes: Float[Array, "*b n"],
    *,
    threshold: float = 0.0,
) -> Float[Array, "*b n"]:
    """Least-squares refit of y on the support {j : |z_j| > threshold} of ``codes``.

    Removes the L1 shrinkage bias. At most M atoms (the largest |z_j|) are kept, so the refit is
    never underdetermined; entries off the support are set to 0.
    """
    dictionary, y, codes = _validate(dictionary, y, codes)
    threshold = _checks.real_number("threshold", threshold, minimum=0.0)
    m, n = dictionary.shape
    size = min(m, n)

    def single(yi, zi):
        mag, idx = jax.lax.top_k(jnp.abs(zi), size)
        coef, _ = _support_least_squares(dictionary, yi, idx, mag > threshold)
        return jnp.zeros_like(zi).at[idx].add(coef)

    return _batched(single, y, codes)


def basis_pursuit(
    dictionary: Float[Array, "m n"],
    y: Float[Array, "*b m"],
    *,
    nonneg: bool = False,
    max_iter: int = 2000,
    tol: float = 1e-5,
    threshold_ratio: float = 0.1,
) -> SparseCodingResult:
    """Basis pursuit min ‖z‖₁ s.t. Dz = y (and z ≥ 0 if ``nonneg``) by ADMM, then debiasing.

    ADMM on the splitting z ∈ {Dz = y}, w = z (Boyd et al. 2011, §6.2):

        z ← Π(w − u),  w ← prox_{‖·‖₁/ρ}(z + u),  u ← u + z − w,

    with the exact projection Π(v) = v − D⁺(Dv − y) (D has full row rank for M ≤ N), so every
    iterate satisfies the constraint and w is exactly sparse. The prox threshold 1/ρ is
    ``threshold_ratio``·‖Dᵀy‖_∞. Stops when ‖z − w‖ and ‖w_k − w_{k−1}‖ are both ≤ tol·‖w‖; the
    codes are then refitted by least squares on the support of w (:func:`debias`).
    ``objective`` is ‖w‖₁ before debiasing. Unlike a Lasso with small λ, the answer does not depend
    on how small λ is: the phase-transition study uses this solver as its L1 oracle.

    Reference: Boyd, Parikh, Chu, Peleato & Eckstein, "Distributed optimization and statistical
    learning via the alternating direction method of multipliers", FnT ML 2011.
    """
    dictionary, y, _ = _validate(dictionary, y)
    max_iter = _checks.positive_int("max_iter", max_iter)
    tol = _checks.real_number("tol", tol, minimum=0.0)
    threshold_ratio = _checks.real_number("threshold_ratio", threshold_ratio, minimum=0.0,
                                          strict_min=True)
    m, n = dictionary.shape
    if m > n:
        raise ValueError(f"basis pursuit needs M <= N (an underdetermined system); got M={m}, N={n}")
    pinv = jnp.linalg.pinv(dictionary)

    def single(yi):
        thresh = threshold_ratio * jnp.max(jnp.abs(dictionary.T @ yi))

        def cond(s):
            return (s[3] < max_iter) & (s[4] > tol)

        def body(s):
            w, u, _, k, _ = s
            z = (w - u) - pinv @ (dictionary @ (w - u) - yi)
            w_new = soft_threshold(z + u, thresh, nonneg)
            scale = jnp.maximum(jnp.linalg.norm(w_new), _TINY)
            change = jnp.maximum(jnp.linalg.norm(z - w_new), jnp.linalg.norm(w_new - w)) / scale
            return w_new, u + z - w_new, w, k + 1, change

        zeros = jnp.zeros((n,), yi.dtype)
        w, _, _, k, change = jax.lax.while_loop(
            cond, body, (zeros, zeros, zeros, jnp.zeros((), jnp.int32), jnp.inf))
        return SparseCodingResult(w, jnp.sum(jnp.abs(w)), change, k, change <= tol, None)

    result = _batched(single, y)
    return result._replace(codes=debias(dictionary, y, result.codes))
