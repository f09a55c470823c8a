"""Sparse coding with a fixed dictionary: ISTA/FISTA, OMP, least-squares debiasing, basis pursuit.

Objective (per sample y ∈ R^M, dictionary D ∈ R^{M×N}):

    min_z  ½‖y − D z‖² + λ‖z‖₁          (optionally subject to z ≥ 0)

Every solver takes one sample ``y`` of shape (M,) or a batch of shape (B, M); batches are solved by
``jax.vmap`` of the single-sample algorithm, so each sample stops on its own tolerance (the batched
answer equals the single-sample one up to floating-point summation order). Solvers are pure and
jit-able; hyperparameters that fix shapes or control flow, such as ``max_iter`` or ``nonneg``, must
be static under ``jax.jit``. Results are NamedTuples carrying convergence information.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from superjax import _checks

_TINY = 1e-30
_BLOCK = 10  # inner FISTA steps between duality-gap checks (working-set solver)


class SparseCodingResult(NamedTuple):
    """Output of an L1 solver; leading batch dimensions follow ``y``.

    Attributes:
      codes: solution z, shape (..., N).
      objective: ½‖y − Dz‖² + λ‖z‖₁ at ``codes``, shape (...).
      gap: certified bound on the suboptimality, objective − (a dual value) ≥ objective − min,
        shape (...). (Basis pursuit: the last relative ADMM residual instead.)
      iterations: iterations taken, shape (...).
      converged: gap ≤ tol·objective + floor, shape (...), where floor = 4·eps·‖y‖·‖z‖₁ is the
        float resolution of the gap (≈ 1e-5..1e-4 of the objective in float32 when the residual is
        tiny; use float64 for tighter certificates).
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
    dictionary, y, codes = _validate(dictionary, y, codes, "codes")
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


def _validate(dictionary, y, init=None, init_name="init"):
    dictionary = _checks.float_array("dictionary", dictionary, ndims=(2,))
    y = _checks.float_array("y", y, ndims=(1, 2))
    _checks.same_size("y's last dimension", y.shape[-1], "dictionary rows (M)", dictionary.shape[0])
    if init is not None:
        init = _checks.float_array(init_name, init, ndims=(y.ndim,))
        want = y.shape[:-1] + (dictionary.shape[1],)
        if init.shape != want:
            raise ValueError(f"{init_name} must have shape {want} (one N-vector per sample), "
                             f"got {init.shape}")
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
    if _checks.violates(lam, _finite_nonnegative):
        raise ValueError("lam must be finite and >= 0 for every sample")
    return lam


def _finite_nonnegative(v: Array) -> Array:
    return jnp.isfinite(v) & (v >= 0)


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


def _duality_gap(objective, rr, x, corr, lam, nonneg):
    """P(z) − D(θ) ≥ P(z) − P* for the Lasso, θ = s·r the scaled residual r = y − Dx at x.

    Dual: D(θ) = θᵀy − ½‖θ‖² over the feasible set ‖Dᵀθ‖_∞ ≤ λ (signed) or Dᵀθ ≤ λ (z ≥ 0);
    s = min(1, λ / max|Dᵀr|) makes θ feasible, so D(θ) ≤ P* by weak duality. Written with
    rᵀy = ‖r‖² + xᵀDᵀr, D(θ) = ½‖r‖²(1 − (1 − s)²) + s·xᵀ(Dᵀr): no term of the size of ‖y‖², so
    the gap is resolved to float precision of P itself even when the residual is tiny.

    Args:
      objective: P(z) at the primal point.
      rr: ‖r‖² with r = y − Dx.
      x: the point whose residual gives θ (x = z for an exact gap at z).
      corr: Dᵀr.
    """
    peak = jnp.max(corr) if nonneg else jnp.max(jnp.abs(corr))
    scale = jnp.where(peak > lam, lam / jnp.where(peak > lam, peak, 1.0), 1.0)
    dual = 0.5 * rr * (1.0 - (1.0 - scale) ** 2) + scale * jnp.vdot(x, corr)
    return objective - dual


def _momentum(t, x, z_new, z_old, restart: bool):
    """FISTA's t-sequence and extrapolation weight β, with optional gradient restart.

    Restart (O'Donoghue & Candès 2015): drop the momentum when it points uphill, i.e. when
    (x − z_new)ᵀ(z_new − z_old) > 0.
    """
    t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t**2))
    beta = (t - 1.0) / t_new
    if restart:
        uphill = jnp.vdot(x - z_new, z_new - z_old) > 0
        t_new, beta = jnp.where(uphill, 1.0, t_new), jnp.where(uphill, 0.0, beta)
    return t_new, beta


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
        t, beta = _momentum(s.t, s.x, z, s.z, restart)
    else:
        t, beta = s.t, jnp.zeros_like(s.t)
    objective = 0.5 * jnp.sum(rz**2) + lam * jnp.sum(jnp.abs(z))
    gap = _duality_gap(objective, jnp.vdot(s.rx, s.rx), s.x, -grad, lam, nonneg)
    return _FistaState(z, rz, z + beta * (z - s.z), rz + beta * (rz - s.rz), t, s.k + 1,
                       objective, gap)


def _gap_floor(y, z):
    """Float resolution of the duality gap: r = y − Dz carries absolute error ≈ eps·‖y‖, which
    reaches the gap through Dᵀr weighted by |z|. Gaps below this are rounding, not suboptimality."""
    return 4.0 * jnp.finfo(y.dtype).eps * jnp.linalg.norm(y) * jnp.sum(jnp.abs(z))


def _certified(gap, objective, tol, y, z):
    """Relative duality gap below tol, up to the working precision of the gap itself."""
    return gap <= tol * objective + _gap_floor(y, z)


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

    return _fista_loop(dictionary, y, z0, lam, step, tol, max_iter=max_iter, nonneg=nonneg,
                       accelerated=accelerated, restart=restart, trace=trace)


@functools.partial(jax.jit, static_argnames=("max_iter", "nonneg", "accelerated", "restart",
                                             "trace"))
def _fista_loop(dictionary, y, z0, lam, step, tol, *, max_iter, nonneg, accelerated, restart,
                trace) -> SparseCodingResult:
    """:func:`fista` after validation; compiled once per shape and option set (called eagerly, a
    while loop would recompile on every call)."""

    def single(yi, z0i, lami):
        state = _fista_init(dictionary, yi, z0i, lami)
        buf = jnp.full((max_iter,), jnp.nan, yi.dtype) if trace else None

        def cond(carry):
            s, _ = carry
            return (s.k < max_iter) & ~_certified(s.gap, s.objective, tol, yi, s.z)

        def body(carry):
            s, b = carry
            s = _fista_step(dictionary, yi, lami, step, nonneg, accelerated, restart, s)
            return s, (None if b is None else b.at[s.k - 1].set(s.objective))

        s, buf = jax.lax.while_loop(cond, body, (state, buf))
        return SparseCodingResult(s.z, s.objective, s.gap, s.k,
                                  _certified(s.gap, s.objective, tol, yi, s.z), buf)

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
        return SparseCodingResult(s.z, s.objective, s.gap, s.k,
                                  _certified(s.gap, s.objective, 1e-6, yi, s.z), objectives)

    return _batched(single, y, z0, lam)


def fista_working_set(
    dictionary: Float[Array, "m n"],
    y: Float[Array, "*b m"],
    lam: float | Float[Array, "*b"],
    *,
    nonneg: bool = False,
    working_set: int = 64,
    rounds: int = 10,
    tol: float = 1e-5,
    inner_max_iter: int = 2000,
    gram: Float[Array, "n n"] | None = None,
) -> SparseCodingResult:
    """FISTA on per-sample working sets, certified by the duality gap of the FULL problem.

    Same objective as :func:`fista`. Modern Lasso solvers (Blitz, celer, skglm) exploit that the
    solution is sparse: each round solves the problem restricted to a working set W of
    ``working_set`` atoms with FISTA on the Gram block G[W, W] (s×s products instead of M×N), then
    checks the full problem once: the duality gap from the full residual either certifies
    P(z) − P* ≤ tol·P(z), or the next W keeps the s/2 largest non-zeros and fills up with the
    atoms that violate the optimality condition |d_jᵀr| ≤ λ most. The first W holds the atoms most
    correlated with y.

    Per round the full dictionary is touched twice (D z and Dᵀr), so a batch costs a handful of
    full products plus cheap s×s work, against one pair per iteration for :func:`fista`.
    ``converged`` is False when ``rounds`` ran out, e.g. when the solution has more than
    ``working_set`` non-zeros: raise ``working_set`` then.

    Args:
      dictionary, y, lam, nonneg, tol: as for :func:`fista`.
      working_set: atoms per working set s (static); should be at least twice the support size
        of the solution (half of W is reserved for the current non-zeros).
      rounds: maximal number of working-set rounds.
      inner_max_iter: iteration cap of each restricted solve.
      gram: DᵀD if already computed (N×N); computed otherwise.

    References: Johnson & Guestrin, "Blitz", ICML 2015; Massias, Gramfort & Salmon, "Celer",
    ICML 2018; Beck & Teboulle 2009 for the inner solver.
    """
    dictionary, y, _ = _validate(dictionary, y)
    m, n = dictionary.shape
    size = _checks.positive_int("working_set", working_set, maximum=n)
    rounds = _checks.positive_int("rounds", rounds)
    inner_max_iter = _checks.positive_int("inner_max_iter", inner_max_iter)
    tol = _checks.real_number("tol", tol, minimum=0.0)
    lam = _check_lam(lam, y.shape[:-1])
    gram = dictionary.T @ dictionary if gram is None else gram

    def restricted(ws, z0, corr_y, yy, lami, floor_scale):
        """FISTA with restart on min ½zᵀG_Wz − b_Wᵀz + λ‖z‖₁ (+ ½‖y‖²), Gram form."""
        g = gram[ws[:, None], ws[None, :]]
        b = corr_y[ws]
        lip = _power_norm(g)

        def primal_dual(z):
            gz = g @ z
            # ‖y − D_W z‖² in Gram form loses digits to cancellation, but the gap below only
            # weighs it by (1 − s)², which vanishes at the optimum.
            rr = jnp.maximum(yy - 2 * jnp.vdot(b, z) + jnp.vdot(z, gz), 0.0)
            obj = 0.5 * rr + lami * jnp.sum(jnp.abs(z))
            return obj, _duality_gap(obj, rr, z, b - gz, lami, nonneg)

        def step(_, c):
            z, x, t = c
            z_new = soft_threshold(x - (g @ x - b) / lip, lami / lip, nonneg)
            t_new, beta = _momentum(t, x, z_new, z, restart=True)
            return z_new, z_new + beta * (z_new - z), t_new

        def cond(c):
            k, z, _, _, obj, gap = c
            return (k < inner_max_iter) & (gap > 0.5 * tol * obj + floor_scale * jnp.sum(
                jnp.abs(z)))

        def body(c):
            # Blocks of _BLOCK steps between gap checks: the check costs a product with G_W.
            k, z, x, t, _, _ = c
            z, x, t = jax.lax.fori_loop(0, _BLOCK, step, (z, x, t))
            obj, gap = primal_dual(z)
            return k + _BLOCK, z, x, t, obj, gap

        one = jnp.ones((), y.dtype)
        init = (jnp.zeros((), jnp.int32), z0, z0, one, one, jnp.inf * one)
        k, z, *_ = jax.lax.while_loop(cond, body, init)
        return z, k

    def single(yi, lami):
        corr_y = dictionary.T @ yi
        yy = jnp.vdot(yi, yi)
        score = corr_y if nonneg else jnp.abs(corr_y)
        _, ws = jax.lax.top_k(score, size)

        def full_check(ws, zw):
            z = jnp.zeros((n,), yi.dtype).at[ws].set(zw)
            r = yi - dictionary @ z
            corr = dictionary.T @ r
            obj = 0.5 * jnp.vdot(r, r) + lami * jnp.sum(jnp.abs(z))
            return z, corr, _duality_gap(obj, jnp.vdot(r, r), z, corr, lami, nonneg), obj

        floor_scale = _gap_floor(yi, jnp.ones(()))

        def cond(c):
            rnd, _, _, _, gap, obj, z = c
            return (rnd < rounds) & ~_certified(gap, obj, tol, yi, z)

        def body(c):
            rnd, ws, zw, iters, _, _, _ = c
            zw, k = restricted(ws, zw, corr_y, yy, lami, floor_scale)
            z, corr, gap, obj = full_check(ws, zw)
            # Next working set: the size//2 largest non-zeros stay (celer's rule that W be about
            # twice the support); the rest are the atoms with the largest |d_jᵀr|/λ, i.e. the
            # worst violators of the optimality condition, then those closest to entering.
            violation = corr if nonneg else jnp.abs(corr)
            _, keep_idx = jax.lax.top_k(jnp.abs(z), size // 2)
            reserved = jnp.zeros((n,), bool).at[keep_idx].set(True) & (z != 0)
            priority = jnp.where(reserved, jnp.inf, violation)
            _, new_ws = jax.lax.top_k(priority, size)
            return rnd + 1, new_ws, z[new_ws], iters + k, gap, obj, z

        zeros = jnp.zeros((size,), yi.dtype)
        one = jnp.ones((), yi.dtype)
        init = (jnp.zeros((), jnp.int32), ws, zeros, jnp.zeros((), jnp.int32), jnp.inf * one,
                one, jnp.zeros((n,), yi.dtype))
        _, _, _, iters, gap, obj, z = jax.lax.while_loop(cond, body, init)
        return SparseCodingResult(z, obj, gap, iters, _certified(gap, obj, tol, yi, z), None)

    return _batched(single, y, lam)


def _power_norm(g: Float[Array, "s s"], iters: int = 30) -> Float[Array, ""]:
    """Largest eigenvalue of a PSD matrix by power iteration, with a 1 % safety margin."""

    def body(_, v):
        w = g @ v
        return w / jnp.maximum(jnp.linalg.norm(w), _TINY)

    v = jax.lax.fori_loop(0, iters, body, jnp.ones(g.shape[0], g.dtype) / jnp.sqrt(g.shape[0]))
    return 1.01 * jnp.vdot(v, g @ v) + _TINY


# --------------------------------------------------------------------------------------------
# Support-based methods: OMP and least-squares debiasing


def _padded_solve(gram, rhs, valid, cholesky: bool = False):
    """Solves the normal equations G[S, S] c = rhs[S] on the slots S = valid, shape-static.

    Invalid slots get an identity block and a zero right-hand side, so their coefficient is 0.
    ``cholesky`` is faster for small, well-conditioned supports (OMP); LU is the safe default for
    supports that may be near-singular (debiasing up to M atoms).
    """
    both = valid[:, None] & valid[None, :]
    gram = jnp.where(both, gram, jnp.eye(gram.shape[0], dtype=gram.dtype))
    rhs = jnp.where(valid, rhs, 0.0)
    if cholesky:
        return jax.scipy.linalg.solve(gram, rhs, assume_a="pos") * valid
    return jnp.linalg.solve(gram, rhs) * valid


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

    gram = dictionary.T @ dictionary

    def single(yi):
        corr_y = dictionary.T @ yi

        def refit(support, count):
            # Least squares on the selected atoms from the Gram matrix: G[S, S] c = (Dᵀy)[S]
            # (padded slots get an identity block), so no M×K column gather per sample.
            valid = jnp.arange(k) < count
            idx = jnp.maximum(support, 0)
            coef = _padded_solve(gram[idx[:, None], idx[None, :]], corr_y[idx], valid,
                                 cholesky=True)
            codes = jnp.zeros((n,), yi.dtype).at[idx].add(coef)
            return codes, yi - dictionary @ codes

        def body(i, carry):
            support, chosen, count, r = carry
            go = jnp.linalg.norm(r) > tol
            corr = jnp.where(chosen, -1.0, jnp.abs(dictionary.T @ r))
            j = jnp.argmax(corr)
            support = jnp.where(go, support.at[i].set(j), support)
            chosen = jnp.where(go, chosen.at[j].set(True), chosen)
            count = count + go
            return support, chosen, count, refit(support, count)[1]

        init = (jnp.full((k,), -1), jnp.zeros((n,), bool), jnp.zeros((), jnp.int32), yi)
        support, _, count, _ = jax.lax.fori_loop(0, k, body, init)
        codes, r = refit(support, count)
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
    dictionary, y, codes = _validate(dictionary, y, codes, "codes")
    threshold = _checks.real_number("threshold", threshold, minimum=0.0)
    m, n = dictionary.shape
    size = min(m, n)

    def single(yi, zi):
        mag, idx = jax.lax.top_k(jnp.abs(zi), size)
        atoms = dictionary[:, idx]
        coef = _padded_solve(atoms.T @ atoms, atoms.T @ yi, mag > threshold)
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
        raise ValueError(f"basis pursuit needs M <= N (an underdetermined system); "
                         f"got M={m}, N={n}")
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
