"""Query-access recovery of the directions of f(x) = Σ_i a_i σ_i(v_iᵀx), and of f itself.

Every method takes an :class:`~superjax.oracle.Oracle`, a key and a query budget, and returns one
:class:`RecoveryResult`. All share the finishing stage (:func:`finish`): a ridge-function model
(:mod:`superjax.ridge`) is fitted on fresh queries along the candidate directions, optionally
refined jointly with them; directions whose fitted response carries no variance are dropped, close
pairs that one direction stands for are split, and directions whose neighbours can take them over
are dropped at the end; where the fit's measured variance calls for it (high noise), the result is
refitted on the search's own queries as well (:func:`polish`).

* ``fourier`` — the Gaussian-windowed Fourier search (query-recovery.md §2–§4). One query set
  x ~ N(0, s²I) serves every frequency. The gradient field Ĝ(ω) = E[x f e^{−iωx}]/s² + iω F̂(ω)
  (Stein) is, inside the tube of one feature, c·v_i, so v_i is the top left singular vector of
  [Re Ĝ, Im Ĝ]. The search runs that readout as a fixed-point map u ← readout(Ĝ(τu)) from a batch
  of random starts (the window factor exp(−s²τ²(1 − ⟨u, v⟩²)/2) makes it a tensor power method of
  growing order) and, because every start falls into the basin of a dominant feature, peels: it
  fits the found ridge terms and a quadratic (the high-pass that removes the low-frequency and
  degenerate mass), and searches the residual again, until a round finds nothing new (from
  three sets of starts) or removes too little of the residual.
* ``hessian`` — span of finite-difference Hessians ∇²f = Σ a_i σ_i'' v_i v_iᵀ at random points,
  each on its own random rotation of the stencil, then the subspace power method (Kileel & Pereira,
  arXiv 1912.04007) for the rank-one elements of the span (Fornasier et al. 2012).
* ``hermite`` — E[f(x) He_4(x)] = Σ a_i c_4(σ_i) v_i^{⊗4}, unfolded d²×d², its column span, and
  the same subspace power method (n up to ≈ d²/2); or order 3 with Jennrich's simultaneous
  diagonalisation (n ≤ d).
* ``student`` — a two-layer ReLU network (width_factor · 4d units; n is unknown to the method)
  fitted to the queries; its unit directions are clustered up to sign.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from superjax import _checks, ridge
from superjax.oracle import Oracle, QueryBudgetExceeded, Target, evaluate

METHODS = ("fourier", "hessian", "hermite", "student")
#: Non-polynomial variance share (of var f) above which a direction is always kept; below it a
#: direction stays when its response carries more than a fit of pure noise would give it
#: (:func:`_keep_bar`), as every feature's does at n = 256 (the weakest sigmoid: 4.9e-6).
PRUNE = 1e-5
MIN_FOURIER_QUERIES = 16_384
#: Peeling stops when a round's new directions left more than this share of the residual. Merged
#: clustered pairs come apart one direction per round, each removing only ~20 % of what is left,
#: so the bar is a 3 % reduction, not more.
PEEL_PROGRESS = 0.97
#: A peeling round whose random starts find nothing new is tried again with fresh starts this
#: many times before the search stops. Late in a search few starts converge, and how many is
#: chance: d = 32, n = 256, Δ = 0.3 (seed 2) had 21 of 128 in one round and 0 in the next, with
#: 1.3e-3 of var f unexplained and 27 directions still to find.
EMPTY_RETRIES = 2
#: Split stage (:func:`split`): each direction gets a twin this many rad away, and the split model
#: is kept only when its relative error is at most SPLIT_GAIN times that of the fit it started
#: from. Without close pairs the doubled fit gains ~10 % (overfitting); d = 16, n = 64 targets
#: with separated Δ = 0.1 pairs gained 48–50 %, so the bar is a 40 % gain.
SPLIT_ANGLE = 0.05
SPLIT_GAIN = 0.6
#: Two close directions are merged when one ridge reproduces both within this share of the
#: fit's residual mean square (:func:`merge_redundant`): a candidate found twice costs ~nothing
#: to merge, a clustered pair at Δ = 0.1 rad costs about the whole residual.
MERGE_TOL = 0.1
#: :func:`drop_redundant` tests clusters of directions at |cos| > DROP_CLOSE (up to DROP_LARGEST
#: directions, refitted by DROP_STEPS Levenberg–Marquardt steps) and drops a direction when it
#: lowers the error by less than DROP_AIC times the share its parameters fit of pure noise.
DROP_CLOSE, DROP_LARGEST, DROP_STEPS, DROP_AIC = 0.9, 8, 6, 2.0
#: :func:`collapse_split` tests pairs of directions at |cos| > COLLAPSE_LINK: each is collapsed
#: into one ridge and refitted by COLLAPSE_STEPS Levenberg–Marquardt steps with the rest held,
#: and those within COLLAPSE_LOCAL times the pair's own error go to a whole-model test.
COLLAPSE_LINK, COLLAPSE_STEPS, COLLAPSE_LOCAL = 0.85, 12, 1.25
#: :func:`split_pairs` fits every direction with a twin by PAIR_STEPS Levenberg–Marquardt steps
#: (the twin travels from SPLIT_ANGLE along its aim, or a random perpendicular, to the missing
#: member). A pair that pays is fitted again from two more starts, its twin PAIR_RETRY_ANGLE rad
#: either side of the direction along the fitted pair's own axis (:func:`pair_costs`).
PAIR_STEPS, PAIR_RETRY_ANGLE = 20, 0.15
#: :func:`polish` refits the finished model on more queries (the search's own, reused) until the
#: fit's variance (measured by halving the fit's queries) falls to POLISH_TARGET of var y, and
#: keeps the refit when it lowers the error on POLISH_HOLDOUT of them that it did not use.
POLISH_TARGET, POLISH_HOLDOUT = 1e-5, 20_000
#: :func:`converge` repeats rounds (CONVERGE_CLUSTER_STEPS Levenberg–Marquardt steps on each
#: cluster of close directions, then a joint fit of CONVERGE_STEPS L-BFGS steps) until no
#: direction moves more than CONVERGE_ANGLE degrees in one, at most CONVERGE_ROUNDS times.
CONVERGE_STEPS, CONVERGE_CLUSTER_STEPS, CONVERGE_ANGLE, CONVERGE_ROUNDS = 100, 8, 0.05, 10
#: A drop by this factor between consecutive singular values of the Hessian span marks exact data.
EXACT_GAP = 1e3
#: Eigenvalues of the order-4 Hermite moment count as signal above this multiple of the noise edge.
HERMITE_EDGE = 1.5


class RecoveryResult(NamedTuple):
    """Found directions (unit rows), the fitted model of f, queries used, and diagnostics."""

    directions: Float[Array, "m d"]
    model: ridge.RidgeModel
    queries: int
    seconds: float
    diagnostics: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RecoveryConfig:
    """Options shared by the methods; each method reads the ones it needs.

    Attributes:
      budget: total queries (method stage + reconstruction).
      fit_queries: queries kept for the final least-squares fit (half of them at scale 2 so that
        the fitted responses cover twice the query scale).
      refine: refine directions jointly with the responses in the final fit.
      split: after the final fit, try splitting every direction in two (:func:`split`), which
        separates close pairs (Δ ≲ 0.2 rad) that every search returns as one direction, and
        at the end each remaining direction on its own (:func:`split_pairs`).
      drop: with ``refine``, end by dropping directions that their close neighbours can take
        over (:func:`drop_redundant`): duplicates of one feature, or one too many in a cluster;
        then merge directions that share one feature between them (:func:`collapse_split`).
      polish: with ``refine``, refit the finished model on as many of the search's queries as
        the noise it measures calls for (:func:`polish`).
      polish_target: the fit variance (share of var y) the polish refits down to; 0 refits on
        all of the search's queries whenever the fit has any variance, which brings the
        directions to the Cramér–Rao bound of the whole budget (:func:`angle_bounds`) at the
        cost of a fit on all of them.
      scale: query scale s (queries x ~ N(0, s²I)).
      starts: random starts per Fourier round; rounds: a safety cap on the peeling rounds. The
        search stops on its own when a round finds nothing new (after ``EMPTY_RETRIES`` fresh
        sets of starts) or removes < 3 % of the residual.
        A round adds ~20 directions at d = 32 and a merged pair comes apart one direction per
        round: Δ = 0.3 pairs at n = 128 took 14–17 rounds at d = 16 and 32.
      taus: annealed radii of the Fourier fixed-point iteration (in units of 1/s).
      h: finite-difference step of the Hessian method.
      max_features: cap on the number of directions kept (None: unbounded).
    """

    budget: int = 1_000_000
    fit_queries: int = 40_000
    refine: bool = True
    split: bool = True
    drop: bool = True
    polish: bool = True
    polish_target: float = POLISH_TARGET
    scale: float = 1.0
    starts: int = 128
    rounds: int = 40
    taus: tuple[float, ...] = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5)
    h: float = 0.5
    max_features: int | None = None
    hermite_order: int = 4
    width_factor: int = 4

    def __post_init__(self):
        _checks.positive_int("budget", self.budget)
        _checks.positive_int("fit_queries", self.fit_queries, minimum=1000)
        if self.fit_queries >= self.budget:
            raise ValueError(f"budget ({self.budget}) must exceed fit_queries "
                             f"({self.fit_queries}): the search needs queries of its own")
        _checks.real_number("scale", self.scale, minimum=0.0, strict_min=True)
        _checks.real_number("polish_target", self.polish_target, minimum=0.0)
        _checks.real_number("h", self.h, minimum=0.0, strict_min=True)
        _checks.positive_int("starts", self.starts)
        _checks.positive_int("rounds", self.rounds)
        if self.hermite_order not in (3, 4):
            raise ValueError(f"hermite_order must be 3 or 4, got {self.hermite_order!r}")
        _checks.positive_int("width_factor", self.width_factor)


# ----------------------------------------------------------------------------- Fourier estimators

@jax.jit
def fourier_transforms(x: Float[Array, "q d"], y: Float[Array, " q"], omega: Float[Array, "b d"],
                       scale: float) -> tuple[Array, Array]:
    """F̂(ω) and the Stein gradient field Ĝ(ω) = E[x y e^{−iωx}]/s² + iω F̂(ω), complex64.

    Batched over frequencies, chunked over queries (4096 per chunk) to bound memory.
    """
    q, d = x.shape
    chunk = min(q, 4096)
    pad = (-q) % chunk
    xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, d)
    ys = jnp.pad(y, (0, pad)).reshape(-1, chunk)

    def body(acc, xy):
        xc, yc = xy
        e = jnp.exp(-1j * (xc @ omega.T).astype(jnp.complex64))   # (chunk, b)
        f = yc.astype(jnp.complex64) @ e
        g = ((xc * yc[:, None]).T.astype(jnp.complex64) @ e).T     # (b, d)
        return (acc[0] + f, acc[1] + g), None

    zero = (jnp.zeros(omega.shape[0], jnp.complex64), jnp.zeros(omega.shape, jnp.complex64))
    (f, g), _ = jax.lax.scan(body, zero, (xs, ys))
    f, g = f / q, g / (q * scale**2)
    return f, g + 1j * omega * f[:, None]


def readout(g: Array, reference: Float[Array, "b d"]) -> Float[Array, "b d"]:
    """Top left singular vector of [Re Ĝ, Im Ĝ] per frequency, signed to agree with reference."""
    u, _, _ = jnp.linalg.svd(jnp.stack([g.real, g.imag], axis=-1), full_matrices=False)
    v = u[..., 0]
    return v * jnp.where(jnp.sum(v * reference, axis=-1, keepdims=True) < 0, -1.0, 1.0)


@jax.jit
def fixed_point(x, y, starts: Float[Array, "b d"], taus: Float[Array, " t"], scale: float):
    """u ← readout(Ĝ(τ u / s)) over the τ schedule; returns the end points, their Fourier mass
    |F̂|² + ‖Ĝ‖² at the last τ, and the last step's |cos| (1 at a fixed point)."""

    def step(u, tau):
        f, g = fourier_transforms(x, y, tau / scale * u, scale)
        new = readout(g, u)
        return new, (jnp.abs(jnp.sum(new * u, axis=-1)), jnp.abs(f) ** 2 + jnp.sum(jnp.abs(g) ** 2,
                                                                                   axis=-1))

    u, (moves, mass) = jax.lax.scan(step, starts, taus)
    return u, mass[-1], moves[-1]


def _say(progress: Callable[[str], None] | None, line: str) -> None:
    if progress:
        progress(line)


def _random_unit(key, b: int, d: int) -> Array:
    return ridge.unit(jax.random.normal(key, (b, d)))


def dedupe(v: Float[Array, "m d"], score, threshold: float, existing=None) -> np.ndarray:
    """Greedy: keep rows in order of decreasing score unless |cos| > threshold with a kept one."""
    v, score = np.asarray(v), np.asarray(score)
    kept = [] if existing is None else list(np.asarray(existing))
    new = []
    for i in np.argsort(-score):
        if all(abs(float(v[i] @ w)) <= threshold for w in kept):
            kept.append(v[i])
            new.append(v[i])
    return np.asarray(new).reshape(-1, v.shape[1])


def _gaussian_queries(oracle: Oracle, key, q: int, scale: float):
    x = scale * jax.random.normal(key, (q, oracle.d))
    return x, oracle(x)


def _fit_design(key, q: int, d: int, scale: float) -> Array:
    """Fit/test design: half at scale 2s, half at s, so fitted responses cover twice the scale."""
    return (scale * jax.random.normal(key, (q, d))).at[: q // 2].multiply(2.0)


def _fit_queries(oracle: Oracle, key, q: int, scale: float):
    x = _fit_design(key, q, oracle.d, scale)
    return x, oracle(x)


def _rows(model: ridge.RidgeModel, keep) -> ridge.RidgeModel:
    return model._replace(directions=model.directions[keep], coef=model.coef[keep])


def _padded(model: ridge.RidgeModel) -> ridge.RidgeModel:
    """``model`` with silent rows (direction e₁, zero response) up to a multiple of 16 rows, so
    that a search whose direction count changes every round reuses one compiled program."""
    m, d = model.directions.shape
    extra = 16 * max(1, -(-m // 16)) - m
    return model._replace(
        directions=jnp.concatenate([model.directions, jnp.eye(1, d).repeat(extra, 0)]),
        coef=jnp.concatenate([model.coef, jnp.zeros((extra, model.coef.shape[1]))]))


def _shares(model: ridge.RidgeModel, x) -> np.ndarray:
    """:func:`ridge.nonpolynomial_share` of every direction (through :func:`_padded`)."""
    m = model.directions.shape[0]
    return np.asarray(ridge.nonpolynomial_share(_padded(model), x))[:m]


def fit_ridge(directions, x, y, *, extent: float, refine: bool = False, steps: int = 100,
              start: ridge.RidgeModel | None = None) -> ridge.RidgeModel:
    """:func:`ridge.fit` through :func:`_padded` (padding rows kept out of the fit), so that a
    search adding a few directions per round reuses one compiled fit instead of recompiling.

    ``start`` warm-starts the fit: its responses initialise the first rows, its polynomial the
    polynomial (its directions must be the first rows of ``directions``)."""
    v = jnp.asarray(directions, jnp.float32).reshape(-1, x.shape[1])
    m = v.shape[0]
    model = _padded(ridge.init(v, extent=extent))
    active = jnp.arange(model.directions.shape[0]) < m
    if start is not None:
        model = model._replace(coef=model.coef.at[: start.coef.shape[0]].set(start.coef),
                               const=start.const, linear=start.linear, quad=start.quad)
    model = ridge.fit(model, x, y, directions=False, steps=steps, active=active)
    if refine and m:
        model = ridge.fit(model, x, y, directions=True, steps=steps, active=active)
    return _rows(model, slice(0, m))


def fourier(oracle: Oracle, key, config: RecoveryConfig = RecoveryConfig(),
            progress: Callable[[str], None] | None = None) -> tuple[Array, dict]:
    """Candidate directions by the peeled Fourier fixed-point search (see the module docstring)."""
    d, s = oracle.d, config.scale
    if config.budget - config.fit_queries < MIN_FOURIER_QUERIES:
        raise QueryBudgetExceeded(
            f"the fourier method needs at least {MIN_FOURIER_QUERIES} search queries beyond the "
            f"{config.fit_queries} of the final fit (budget {config.budget}): below that the "
            "Monte-Carlo floor of Ĝ hides features of weight 0.5")
    kq, kr = jax.random.split(key)
    x, y = _gaussian_queries(oracle, kq, config.budget - config.fit_queries, s)
    taus = jnp.asarray(config.taus)
    found = np.zeros((0, d), np.float32)
    # Peeling fits use a subsample: they only need the residual, not the final accuracy.
    xf, yf = x[: config.fit_queries], y[: config.fit_queries]
    rounds = []
    model = None
    stop = "round cap"
    for r in range(config.rounds):
        # Warm-started from the last round's fit, so the refinement of the earlier directions
        # accumulates over the rounds: a direction left at |cos| ≈ 0.9 by its round otherwise
        # leaves a residual that pulls every start of the later rounds onto a spurious point
        # beside it, and weak directions (ReLU kinks) are never reached (d = 32, n = 128).
        model = fit_ridge(found, xf, yf, extent=4.5 * s, refine=True, steps=60, start=model)
        if len(found):
            share = _shares(model, xf) / float(jnp.var(yf))
            keep = share > _keep_bar(model, xf, yf)
            model = _rows(model, np.flatnonzero(keep))
            found = np.asarray(model.directions)
        resid = y - ridge.predict(model, x)
        frac = float(jnp.var(resid) / jnp.var(y))
        if rounds and frac > PEEL_PROGRESS * rounds[-1]["residual_fraction"]:
            # the last round's directions explained too little: the rest is noise or misfit
            stop = "no progress"
            break
        floor = float(jnp.var(resid)) * (1 + d / s**2) / x.shape[0]  # Monte-Carlo |Ĝ|² level
        key_r = jax.random.fold_in(kr, r)
        for attempt in range(EMPTY_RETRIES + 1):
            starts = _random_unit(key_r if attempt == 0 else jax.random.fold_in(key_r, attempt),
                                  config.starts, d)
            u, mass, move = fixed_point(x, resid, starts, taus, s)
            converged = np.asarray(move) > 0.999
            strong = converged & (np.asarray(mass) > 25 * floor)
            new = dedupe(np.asarray(u)[strong], np.asarray(mass)[strong], 0.98, existing=found)
            if len(new):
                break
        rounds.append({"round": r, "converged": int(converged.sum()), "new": len(new),
                       "kept": len(found), "residual_fraction": frac, "retries": attempt})
        _say(progress, f"fourier round {r}: residual {frac:.3g} of var f, {len(found)} kept, "
                       f"{len(new)} new")
        if len(new) == 0:
            stop = "nothing new"
            break
        found = np.concatenate([found, new])
    if stop == "round cap":
        _say(progress, f"fourier: stopped at the cap of {config.rounds} rounds while still "
                       "finding directions; raise RecoveryConfig.rounds")
    return jnp.asarray(found), {"rounds": rounds, "stop": stop,
                                "search_queries": int(x.shape[0]), "queries": (x, y)}


# ----------------------------------------------------------------------------- Hessian / Hermite

def subspace_power_method(basis: Float[Array, "r d d"], key, starts: int, *, iters: int = 1000,
                          accept: float = 0.9) -> tuple[Array, Array]:
    """Rank-one elements v vᵀ of a subspace of symmetric matrices (Kileel & Pereira).

    Maximises F(v) = ‖P(v vᵀ)‖²_F over unit v by the shifted power map v ← P(v vᵀ) v + γ v from
    random starts; F(v) = 1 exactly on rank-one members. Returns the end points and F.
    """
    basis = jnp.asarray(basis)
    gamma = 0.5

    def iterate(v, _):
        coeff = jnp.einsum("kij,bi,bj->bk", basis, v, v)
        w = jnp.einsum("bk,kij,bj->bi", coeff, basis, v) + gamma * v
        return ridge.unit(w), None

    v, _ = jax.lax.scan(iterate, _random_unit(key, starts, basis.shape[1]), None, length=iters)
    value = jnp.sum(jnp.einsum("kij,bi,bj->bk", basis, v, v) ** 2, axis=-1)
    return v, value


def _span(rows: Float[Array, "h p"], rank: int | None) -> tuple[Array, int, Array]:
    """Orthonormal basis of the dominant row space, and its rank.

    Rows are vectorised symmetric d×d matrices (D = d(d+1)/2 free entries). With h > 2D noisy
    rows, pure-noise singular values lie in [σ(√h − √D), σ(√h + √D)] (Marchenko–Pastur edges),
    and the smallest symmetric one, sv[D−1], is noise unless the span is everything: the count
    is of singular values above 1.05 × (√h + √D)/(√h − √D) × sv[D−1]. With fewer rows that
    edge ratio diverges, and the count is Gavish & Donoho's threshold for unknown noise,
    ω(β) × the median of the min(h, D) singular values, β = min(h, D)/max(h, D) (arXiv
    1305.5870; it assumes the rank is below half of min(h, D)). Finite-difference errors are not
    i.i.d., so the rank is then the sharpest drop between consecutive singular values near the
    count: in the top quarter below the edge count, which can include a few noise directions;
    within a quarter either side of the threshold count, which errs low. Below 2D rows, a drop
    by more than ``EXACT_GAP`` (exact inputs, where the span may exceed half of min(h, D)) is
    taken as the rank directly.
    """
    _, sv, vt = jnp.linalg.svd(rows, full_matrices=False)
    if rank is None:
        sv_np = np.asarray(sv)
        h, dd = rows.shape
        d = int(round(np.sqrt(dd)))
        big_d = d * (d + 1) // 2
        m = min(h, big_d, len(sv_np))
        if h > 2 * big_d and len(sv_np) >= big_d:
            edge = (np.sqrt(h) + np.sqrt(big_d)) / (np.sqrt(h) - np.sqrt(big_d))
            count = max(1, int(np.sum(sv_np[:big_d] > 1.05 * edge * sv_np[big_d - 1])))
            lo, hi = max(1, count - count // 4), count
        elif m < 2:
            lo = hi = count = 1
        elif (gaps := sv_np[:m - 1] / np.maximum(sv_np[1:m], 1e-30)).max() > EXACT_GAP:
            lo = hi = count = int(np.argmax(gaps)) + 1  # exact inputs: nothing below is signal
        else:
            beta = m / max(h, big_d)
            omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
            count = max(1, int(np.sum(sv_np[:m] > omega * np.median(sv_np[:m]))))
            lo, hi = max(1, count - count // 4), min(m - 1, count + count // 4)
        if hi >= lo and m > 1:
            ratio = sv_np[lo - 1:hi] / np.maximum(sv_np[lo:hi + 1], 1e-30)
            rank = lo + int(np.argmax(ratio))
        else:
            rank = count
    return vt[:rank], rank, sv


def _spm_candidates(mats: Float[Array, "h d d"], key, rank, max_features):
    d = mats.shape[-1]
    basis, rank, sv = _span(mats.reshape(mats.shape[0], d * d), rank)
    basis = basis.reshape(-1, d, d)
    basis = 0.5 * (basis + jnp.swapaxes(basis, 1, 2))
    v, value = subspace_power_method(basis, key, starts=min(max(20 * rank, 200), 4000))
    good = np.asarray(value) > 0.9
    found = dedupe(np.asarray(v)[good], np.asarray(value)[good], 0.995)
    # An identifiable span of rank r holds r rank-one directions; more are local maxima of F.
    found = found[: rank if max_features is None else min(rank, max_features)]
    return jnp.asarray(found), {"span_rank": rank, "singular_values": np.asarray(sv[:4 * rank + 4])}


def finite_difference_hessians(oracle: Oracle, key, centres: int, h: float, scale: float):
    """Second differences along a fresh random orthonormal frame per centre (2d² + 1 queries each).

    H_ij ≈ [f(x+hq_i+hq_j) − f(x+hq_i−hq_j) − f(x−hq_i+hq_j) + f(x−hq_i−hq_j)]/(4h²), rotated back.
    """
    d = oracle.d
    kx, kq = jax.random.split(key)
    x0 = scale * jax.random.normal(kx, (centres, d))
    frames, _ = jnp.linalg.qr(jax.random.normal(kq, (centres, d, d)))
    eye = jnp.eye(d)
    si = jnp.array([1, 1, -1, -1])[:, None, None, None]
    sj = jnp.array([1, -1, 1, -1])[:, None, None, None]
    steps = h * (si * eye[None, :, None, :] + sj * eye[None, None, :, :])      # (4, d, d, d)
    pts = x0[:, None, None, None, :] + jnp.einsum("sijk,ckl->csijl", steps, jnp.swapaxes(frames,
                                                                                         1, 2))
    vals = oracle(pts.reshape(-1, d)).reshape(centres, 4, d, d)
    hq = (vals[:, 0] - vals[:, 1] - vals[:, 2] + vals[:, 3]) / (4 * h**2)
    return jnp.einsum("cij,cki,clj->ckl", hq, frames, frames)


def hessian(oracle: Oracle, key, config: RecoveryConfig = RecoveryConfig(), progress=None):
    """Candidate directions from the span of finite-difference Hessians (see module docstring)."""
    per = 4 * oracle.d**2
    centres = (config.budget - config.fit_queries) // per
    need = oracle.d * (oracle.d + 1) // 2
    if centres < need:
        raise QueryBudgetExceeded(
            f"the hessian method needs at least d(d+1)/2 = {need} Hessians of {per} queries each "
            f"(≥ {need * per + config.fit_queries} queries with the final fit); budget is "
            f"{config.budget}")
    kh, ks = jax.random.split(key)
    _say(progress, f"hessian: {centres} finite-difference Hessians of {per} queries each")
    mats = finite_difference_hessians(oracle, kh, centres, config.h, config.scale)
    found, diag = _spm_candidates(mats, ks, None, config.max_features)
    _say(progress, f"hessian: {found.shape[0]} candidate directions")
    return found, {**diag, "hessians": centres}


def hermite_moment(x: Float[Array, "q d"], y: Float[Array, " q"], order: int) -> Array:
    """E[y He_order(x)] for x ~ N(0, I): order 3 as (d, d, d), order 4 unfolded as (d², d²).

    The sample moment is taken of y minus its degree-≤ 2 Hermite projection (estimated on the same
    queries): He_3 and He_4 are orthogonal to it, so the expectation is unchanged, but the constant
    and quadratic parts of f no longer add their variance to the estimate.
    """
    q, d = x.shape
    eye = jnp.eye(d)
    m0 = jnp.mean(y)
    m1 = x.T @ y / q
    c2 = jnp.einsum("qi,qj,q->ij", x, x, y) / q - m0 * eye         # E[y He_2(x)]
    y = y - m0 - x @ m1 - 0.5 * (jnp.sum((x @ c2) * x, axis=1) - jnp.trace(c2))
    m1 = x.T @ y / q
    m2 = jnp.einsum("qi,qj,q->ij", x, x, y) / q
    if order == 3:
        m3 = jnp.einsum("qi,qj,qk,q->ijk", x, x, x, y) / q
        return m3 - sum(jnp.einsum(f"{a},{b}->ijk", m1, eye) for a, b in
                        (("i", "jk"), ("j", "ik"), ("k", "ij")))
    xx = (x[:, :, None] * x[:, None, :]).reshape(q, d * d)
    m4 = ((xx * y[:, None]).T @ xx / q).reshape(d, d, d, d)
    # He_ijkl = x_i x_j x_k x_l − Σ_6 δ·x x + Σ_3 δ·δ, over the index pairings.
    pairs = sum(jnp.einsum(f"{a},{b}->ijkl", m2, eye) for a, b in (
        ("ij", "kl"), ("ik", "jl"), ("il", "jk"), ("jk", "il"), ("jl", "ik"), ("kl", "ij")))
    deltas = sum(jnp.einsum(f"{a},{b}->ijkl", eye, eye) for a, b in (
        ("ij", "kl"), ("ik", "jl"), ("il", "jk")))
    return (m4 - pairs + jnp.mean(y) * deltas).reshape(d * d, d * d)


def jennrich(t3: Float[Array, "d d d"], key) -> Array:
    """Components of Σ λ_i v_i^{⊗3} (n ≤ d, independent v_i) by simultaneous diagonalisation."""
    d = t3.shape[0]
    a, b = jax.random.normal(key, (2, d))
    ta, tb = jnp.einsum("ijk,k->ij", t3, a), jnp.einsum("ijk,k->ij", t3, b)
    w, v = np.linalg.eig(np.asarray(ta) @ np.linalg.pinv(np.asarray(tb), rcond=1e-3))
    order = np.argsort(-np.abs(w))
    v = np.real(v[:, order]).T
    return ridge.unit(jnp.asarray(v, jnp.float32)), np.abs(w[order])


def hermite(oracle: Oracle, key, config: RecoveryConfig = RecoveryConfig(), progress=None):
    """Candidate directions from Hermite moment tensors (see module docstring)."""
    kq, ks = jax.random.split(key)
    x, y = _gaussian_queries(oracle, kq, config.budget - config.fit_queries, 1.0)
    if config.hermite_order == 3:
        v, w = jennrich(hermite_moment(x, y - jnp.mean(y), 3), ks)
        keep = w > 1e-3 * w[0]
        return v[keep], {"eigenvalues": w}
    # Two half-sample moments: their mean is the estimate, and half their difference has the
    # same noise distribution as that mean with no signal, so its spectral norm is the noise edge.
    half = x.shape[0] // 2
    t4a, t4b = (hermite_moment(x[sl], y[sl], 4) for sl in (slice(0, half), slice(half, 2 * half)))
    t4, null = 0.25 * (t4a + t4b + t4a.T + t4b.T), 0.25 * (t4a - t4b + t4a.T - t4b.T)
    edge = float(jnp.max(jnp.abs(jnp.linalg.eigvalsh(null))))
    evals, evecs = jnp.linalg.eigh(t4)
    order = jnp.argsort(-jnp.abs(evals))
    evals, evecs = evals[order], evecs[:, order]
    rank = max(1, int(jnp.sum(jnp.abs(evals) > HERMITE_EDGE * edge)))
    d = oracle.d
    # The column space of the unfolded tensor lies in span{vec(v vᵀ)}: reuse the SPM machinery.
    mats = (evecs[:, :rank].T * jnp.abs(evals[:rank])[:, None]).reshape(rank, d, d)
    found, diag = _spm_candidates(0.5 * (mats + jnp.swapaxes(mats, 1, 2)), ks, rank,
                                  config.max_features)
    _say(progress, f"hermite: moment rank {rank} above the noise edge, {found.shape[0]} "
                   "candidate directions")
    # Its queries are at scale 1: reusable by the polish only where that is the query scale.
    return found, {**diag, "noise_edge": edge, **({"queries": (x, y)} if config.scale == 1 else {})}


# ----------------------------------------------------------------------------- student network

def student(oracle: Oracle, key, config: RecoveryConfig = RecoveryConfig(), progress=None,
            width: int | None = None, steps: int = 4000):
    """Candidate directions from a two-layer ReLU network fitted to the same kind of queries."""
    d = oracle.d
    kq, kw, kb, kc, korder = jax.random.split(key, 5)
    x, y = _fit_queries(oracle, kq, config.budget - config.fit_queries, config.scale)
    width = width or config.width_factor * 4 * d
    params = {"w": jax.random.normal(kw, (width, d)) / jnp.sqrt(d),
              "b": jax.random.normal(kb, (width,)) * config.scale,
              "c": jax.random.normal(kc, (width,)) / jnp.sqrt(width), "lin": jnp.zeros(d),
              "c0": jnp.zeros(())}
    ystd = jnp.std(y)

    def loss(p, xb, yb):
        pred = jax.nn.relu(xb @ p["w"].T - p["b"]) @ p["c"] + xb @ p["lin"] + p["c0"]
        return jnp.mean((pred - yb / ystd) ** 2)

    tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))

    @jax.jit
    def train(params):
        def body(carry, i):
            p, state = carry
            idx = jax.random.randint(jax.random.fold_in(korder, i), (4096,), 0, x.shape[0])
            g = jax.grad(loss)(p, x[idx], y[idx])
            upd, state = tx.update(g, state, p)
            return (optax.apply_updates(p, upd), state), None
        return jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))[0][0]

    _say(progress, f"student: {width} ReLU units, {steps} Adam steps on {x.shape[0]} queries")
    params = train(params)
    strength = jnp.abs(params["c"]) * jnp.linalg.norm(params["w"], axis=1)
    v = ridge.unit(params["w"])
    live = np.asarray(strength > 0.02 * strength.max())
    # Units on one line with different biases represent one ridge term: merge up to sign.
    found = dedupe(np.asarray(v)[live], np.asarray(strength)[live], 0.99)
    _say(progress, f"student: {int(live.sum())} live units, {len(found)} candidate directions")
    return jnp.asarray(found), {"width": width, "live_units": int(live.sum()), "queries": (x, y)}


# ----------------------------------------------------------------------------- shared pipeline

#: method → search(oracle, key, config, progress) → (candidates, diagnostics). A search may put
#: the queries it drew in ``diagnostics["queries"]`` as (x, y), their last ``POLISH_HOLDOUT`` at
#: the query scale: :func:`recover` takes them out and :func:`polish` may reuse them.
SEARCHES = {"fourier": fourier, "hessian": hessian, "hermite": hermite, "student": student}


def _canonical(model: ridge.RidgeModel, x) -> ridge.RidgeModel:
    """:func:`ridge.canonical` through :func:`_padded` (silent rows have nothing to move)."""
    return _rows(ridge.canonical(_padded(model), x), slice(0, model.directions.shape[0]))


def _share(model: ridge.RidgeModel, x, y) -> np.ndarray:
    """Each direction's non-polynomial response variance as a share of var f, measured on the
    fit queries at the query scale (the second half; :func:`_fit_queries` doubles the first)."""
    return _shares(model, x[x.shape[0] // 2:]) / float(jnp.var(y))


def merge_redundant(model: ridge.RidgeModel, x: Float[Array, "b d"], tol: float, *,
                    close: float = 0.97) -> ridge.RidgeModel:
    """Drops one direction of every close pair whose two ridges one ridge reproduces within ``tol``.

    For directions i, j with |cos| > ``close`` the merge cost is the mean square, over ``x``, of
    σ_i(u_iᵀx) + σ_j(u_jᵀx) − (σ_i + σ_j)(ūᵀx), ū their bisector: what is lost by carrying both
    responses on one direction. Pairs are merged cheapest first while the cost stays below ``tol``,
    keeping the direction whose response has the larger variance; refit afterwards.
    """
    v = np.asarray(ridge.unit(model.directions))
    cos = v @ v.T
    i, j = np.nonzero(np.triu(np.abs(cos) > close, 1))
    if not len(i):
        return model
    # Dropping a direction leaves the other responses as they are, so every pair's cost is fixed:
    # evaluate all of them in one call (each pair's two responses on its bisector), then merge
    # greedily, cheapest first.
    mid = ridge.unit(jnp.asarray(v[i] + np.sign(cos[i, j])[:, None] * v[j]))
    both = model._replace(directions=jnp.concatenate([mid, mid]),
                          coef=jnp.concatenate([model.coef[i], model.coef[j]]))
    one = ridge.responses(both, x)
    resp = ridge.responses(model, x)
    cost = np.asarray(jnp.mean((resp[:, i] + resp[:, j] - one[:, :len(i)] - one[:, len(i):]) ** 2,
                               axis=0))
    power = np.asarray(jnp.var(resp, axis=0))
    alive = np.ones(len(v), bool)
    for p in np.argsort(cost):
        if cost[p] >= tol:
            break
        if alive[i[p]] and alive[j[p]]:
            alive[j[p] if power[i[p]] >= power[j[p]] else i[p]] = False
    keep = np.flatnonzero(alive)
    return _rows(model, np.asarray(keep, int))


def _cluster_fit(cluster: ridge.RidgeModel, x, target, live, *, smoothing: float, steps: int):
    """Levenberg–Marquardt least squares of ``target`` by the ``live`` rows of a cluster of
    directions, responses and directions jointly; returns the mean squared error at the end and
    the fitted cluster.

    A cluster has a few directions, so its Gauss–Newton system (directions and spline
    coefficients, a few hundred unknowns) is formed and solved exactly at every step: a few
    steps converge where first-order fits of the whole model need hundreds. The objective is
    :func:`ridge.fit`'s (mean squared error plus ``smoothing`` · roughness) with the rest of
    the model held.
    """
    w, k = cluster.coef.shape
    b, d = x.shape
    live = live.astype(x.dtype)
    mask = jnp.concatenate([jnp.repeat(live, d), jnp.repeat(live, k)])
    d2 = jnp.diff(jnp.eye(k), n=2, axis=0)
    rough = jax.scipy.linalg.block_diag(jnp.zeros((w * d, w * d)),
                                        smoothing * jnp.kron(jnp.eye(w), d2.T @ d2))

    def unpack(p):
        return cluster._replace(directions=ridge.unit(p[: w * d].reshape(w, d)),
                                coef=p[w * d:].reshape(w, k))

    def pack(model):
        return jnp.concatenate([model.directions.ravel(), (model.coef * live[:, None]).ravel()])

    def error(model):
        return ridge.spline(model, x @ model.directions.T) @ live - target

    def loss(p, e):
        return jnp.mean(e**2) + p @ rough @ p

    def step(_, carry):
        p, value, mu = carry
        model = unpack(p)
        z = x @ model.directions.T
        # e and, by a forward derivative, σ'(z): ∂e/∂v (unit v) is σ'(z) (x − z v), ∂e/∂coef
        # the basis.
        fitted, slope = jax.jvp(lambda z: ridge.spline(model, z), (z,), (jnp.ones_like(z),))
        e = fitted @ live - target
        jv = (slope * live)[..., None] * (x[:, None, :] - z[..., None] * model.directions)
        jc = ridge.basis(model, z) * live[:, None]
        jac = jnp.concatenate([jv.reshape(b, w * d), jc.reshape(b, w * k)], axis=1)
        h = jac.T @ jac / b + rough
        g = jac.T @ e / b + rough @ p
        damped = h + mu * jnp.diag(jnp.diag(h)) + jnp.diag(1.0 - mask) + 1e-9 * jnp.eye(len(p))
        trial = pack(unpack(p - jnp.linalg.solve(damped, g * mask)))  # directions kept unit
        new = loss(trial, error(unpack(trial)))
        better = new < value
        return (jnp.where(better, trial, p), jnp.where(better, new, value),
                jnp.where(better, mu / 3, mu * 4))

    p = pack(unpack(jnp.concatenate([cluster.directions.ravel(), cluster.coef.ravel()])))
    p, _, _ = jax.lax.fori_loop(0, steps, step, (p, loss(p, error(unpack(p))), 1e-3))
    return jnp.mean(error(unpack(p)) ** 2), unpack(p)


@functools.partial(jax.jit, static_argnames=("steps",))
def _cluster_refits(model: ridge.RidgeModel, x, directions, coef, targets, live, *,
                    smoothing: float, steps: int):
    """Each cluster's best fit of its target (row of ``targets``) by its ``live`` rows
    (:func:`_cluster_fit`, started from the given directions and responses): the mean squared
    errors, and the fitted directions and responses."""
    def one(problem):
        directions, coef, target = problem
        error, fitted = _cluster_fit(model._replace(directions=directions, coef=coef), x, target,
                                     live, smoothing=smoothing, steps=steps)
        return error, fitted.directions, fitted.coef
    # One cluster at a time: each is a few milliseconds, and a vmapped batch is no faster on CPU.
    return jax.lax.map(one, (directions, coef, targets))


def _padded8(*arrays):
    """Each array with its first rows repeated to a multiple of 8 rows: fewer distinct programs."""
    pad = -len(arrays[0]) % 8
    return [jnp.concatenate([a, a[np.arange(pad) % len(a)]]) for a in arrays]


def clusters(model: ridge.RidgeModel, close: float = DROP_CLOSE) -> list[np.ndarray]:
    """Groups of ≥ 2 directions linked by |cos| > ``close`` (connected components)."""
    v = np.asarray(ridge.unit(model.directions))
    _, label = connected_components(np.abs(v @ v.T) > close, directed=False)
    return [c for c in (np.flatnonzero(label == i) for i in range(label.max(initial=-1) + 1))
            if len(c) > 1]


def _collapsed(directions: np.ndarray, coef: np.ndarray, power: np.ndarray):
    """Each group (rows of the leading axis, strongest first) with its first row replaced by one
    ridge standing for all of them: the power-weighted mean of the sign-aligned directions,
    carrying the sum of the responses. A spline on the symmetric [−extent, extent] flips its
    argument by reversing its coefficients."""
    directions, coef = np.array(directions), np.array(coef)
    sign = np.sign(np.einsum("tsd,td->ts", directions, directions[:, 0]))
    mean = np.einsum("ts,tsd->td", power * sign, directions)
    directions[:, 0] = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    coef[:, 0] = np.where(sign[..., None] > 0, coef, coef[..., ::-1]).sum(axis=1)
    return directions, coef


def _refit_groups(model: ridge.RidgeModel, x, resp, residual, idx: np.ndarray, directions,
                  coef, live, *, steps: int, smoothing: float):
    """Groups of one size (the rows of ``idx``, shape (t, size)) started from ``directions`` and
    ``coef`` (t, size, ·), each fitted by its ``live`` rows to the model's ``residual`` plus its
    own responses ``resp[:, idx]`` (:func:`_cluster_fit`, the rest of the model held). Returns
    each group's mean squared error and fitted directions and responses."""
    t = len(idx)
    targets = residual[None] + jnp.sum(resp[:, idx], axis=-1).T
    error, directions, coef = _cluster_refits(
        model, x, *_padded8(jnp.asarray(directions), jnp.asarray(coef), targets), live,
        smoothing=smoothing, steps=steps)
    return error[:t], directions[:t], coef[:t]


def _group_costs(model: ridge.RidgeModel, x, y, groups: list[np.ndarray], *, collapse: bool,
                 steps: int, smoothing: float) -> tuple[list[np.ndarray], np.ndarray, list]:
    """What each group of rows of a canonical ``model`` adds to the fit.

    Each group is ordered by response variance on ``x``, strongest first, and refitted on the
    residual of the rest of the model, responses and directions jointly (:func:`_cluster_fit`),
    once whole and once reduced: without its weakest row, or with ``collapse`` as one ridge
    (:func:`_collapsed`). The cost is the ratio of the whole model's two mean squared errors.
    Returns the ordered groups, the costs and each reduced group's fitted directions and
    responses.
    """
    resp = ridge.responses(model, x)
    power = np.asarray(jnp.var(resp, axis=0))
    groups = [c[np.argsort(-power[c])] for c in groups]
    residual = y - ridge.predict(model, x)
    costs, fitted = np.zeros(len(groups)), [None] * len(groups)
    for size in sorted({len(c) for c in groups}):  # one compiled fit per group size
        which = [i for i, c in enumerate(groups) if len(c) == size]
        idx = np.stack([groups[i] for i in which])                                    # (t, size)
        directions, coef = np.asarray(model.directions)[idx], np.asarray(model.coef)[idx]
        fit = functools.partial(_refit_groups, model, x, resp, residual, idx, steps=steps,
                                smoothing=smoothing)
        every = jnp.ones(size, bool)
        whole = fit(directions, coef, every)[0]
        if collapse:
            directions, coef = _collapsed(directions, coef, power[idx])
        live = every.at[1:].set(False) if collapse else every.at[-1].set(False)
        reduced, directions, coef = fit(directions, coef, live)
        costs[which] = np.asarray(reduced) / np.asarray(whole)
        for row, i in enumerate(which):
            fitted[i] = (directions[row], coef[row])
    return groups, costs, fitted


def refit_clusters(model: ridge.RidgeModel, x: Float[Array, "b d"], y: Float[Array, " b"], *,
                   steps: int = CONVERGE_CLUSTER_STEPS, close: float = DROP_CLOSE,
                   largest: int = DROP_LARGEST, smoothing: float = 1e-6
                   ) -> tuple[ridge.RidgeModel, int]:
    """Every cluster of close directions (:func:`clusters`, at most ``largest`` of them) refitted
    on its own: directions and responses jointly, by Levenberg–Marquardt (:func:`_cluster_fit`),
    to the model's residual plus the cluster's own responses, with the rest of the model held.

    Inside a close pair the loss is nearly flat along the pair's difference (the two ridges
    trade response for angle), so first-order fits of the whole model creep there; the
    cluster's exact Gauss–Newton step does not. Returns the model and the number of clusters.
    """
    groups = [c for c in clusters(model, close) if len(c) <= largest]
    if not groups:  # uniform directions: nothing to refit, no responses to evaluate
        return model, 0
    resp = ridge.responses(model, x)
    residual = y - ridge.predict(model, x)
    directions, coef = np.array(model.directions), np.array(model.coef)
    for size in sorted({len(c) for c in groups}):
        idx = np.stack([c for c in groups if len(c) == size])
        _, fitted, fitted_coef = _refit_groups(model, x, resp, residual, idx, directions[idx],
                                               coef[idx], jnp.ones(size, bool), steps=steps,
                                               smoothing=smoothing)
        directions[idx], coef[idx] = np.asarray(fitted), np.asarray(fitted_coef)
    return model._replace(directions=jnp.asarray(directions), coef=jnp.asarray(coef)), len(groups)


def drop_costs(model: ridge.RidgeModel, x: Float[Array, "b d"], y: Float[Array, " b"], *,
               close: float = DROP_CLOSE, largest: int = DROP_LARGEST, steps: int = DROP_STEPS,
               smoothing: float = 1e-6, only=None) -> tuple[list[np.ndarray], np.ndarray]:
    """What the weakest direction of each cluster of close directions adds to the fit.

    A cluster (:func:`clusters`, at most ``largest`` directions) is refitted on the residual of
    the rest of the model, responses and directions jointly (:func:`_cluster_fit`), once with all
    its directions and once without its weakest (smallest response variance). The cost is the ratio
    of the two mean squared errors of the whole model. A duplicate, or a spurious direction whose
    share its neighbours can carry, costs ≈ 1 (the others move to take it over); a cluster of
    distinct features, even a pair at Δ = 0.1 rad, costs several per cent or more.

    The test runs on the model's canonical form (:func:`ridge.canonical`): each response's
    quadratic part along its own direction is moved into the polynomial term, where any direction
    can carry it. As fitted, a nearly linear response (sigmoid) can hold most of its variance in
    that part; it would rank the direction as strong and charge its removal for a linear term
    that no close neighbour can take over (d = 8, sigmoid, n = 32: a duplicate at |cos| 0.91 to
    a found direction cost 5.1 as fitted and 1.002 in canonical form).

    Only the clusters with a row in ``only`` are tested, when it is given. Returns the clusters
    (weakest last) and their costs.
    """
    model = _canonical(model, x)
    groups = [c for c in clusters(model, close)
              if len(c) <= largest and (only is None or np.isin(c, only).any())]
    groups, costs, _ = _group_costs(model, x, y, groups, collapse=False, steps=steps,
                                    smoothing=smoothing)
    return groups, costs


def _aic_bar(model: ridge.RidgeModel, queries: int, factor: float, removed: int = 1,
             parameters: int | None = None) -> float:
    """Akaike's bar on an error ratio for ``removed`` directions of ``parameters`` each (default
    d + k): fitted to pure noise on ``queries`` queries they lower the mean squared error by the
    share ≈ removed · parameters / queries, and ``factor`` = 2 is Akaike's criterion."""
    if parameters is None:
        parameters = model.directions.shape[1] + model.coef.shape[1]
    return 1 + factor * removed * parameters / queries


def drop_redundant(model: ridge.RidgeModel, x, y, *, extent: float, factor: float = DROP_AIC,
                   passes: int = 3, only=None) -> tuple[ridge.RidgeModel, int]:
    """Drops the weakest direction of every cluster that the rest of it can take over, and refits
    the model jointly (warm-started); a cluster that lost a direction is tested again, up to
    ``passes`` times.

    A direction has p = d + k parameters (k spline coefficients). Fitted to pure noise on b
    queries they lower the mean squared error by the share ≈ p / b, so a direction is dropped when
    its cost (:func:`drop_costs`) is below 1 + ``factor`` · p / b (``factor`` = 2: Akaike's
    criterion). The costs are measured on every second fit query (b = 20 000 by default, so the
    bar is 1.006 at d = 16). At d = 16, noise 0.01, redundant directions cost 1.003–1.016 and the
    weaker members of true pairs at Δ = 0.1 rad 1.028 and up: the bar errs towards keeping
    directions. At higher noise a member that the test cannot tell from noise is dropped too.
    With ``only`` (row indices) the first pass tests only the clusters that hold one of them.
    Returns the model and the number dropped.
    """
    half = slice(None, None, 2)
    bar = _aic_bar(model, x[half].shape[0], factor)
    dropped = 0
    for _ in range(passes):
        groups, costs = drop_costs(model, x[half], y[half], only=only)
        redundant = [c for c, cost in zip(groups, costs, strict=True) if cost < bar]
        if not redundant:
            break
        keep = np.setdiff1d(np.arange(model.directions.shape[0]), [c[-1] for c in redundant])
        only = np.flatnonzero(np.isin(keep, np.concatenate(redundant)))  # survivors, new rows
        # The dropped directions' polynomial parts stay in the polynomial term.
        model = fit_ridge(model.directions[keep], x, y, extent=extent, refine=True,
                          start=_rows(_canonical(model, x), keep))
        dropped += len(redundant)
    return model, dropped


def collapse_split(model: ridge.RidgeModel, x, y, *, extent: float, factor: float = DROP_AIC,
                   link: float = COLLAPSE_LINK, local: float = COLLAPSE_LOCAL, passes: int = 3
                   ) -> tuple[ridge.RidgeModel, int]:
    """Merges directions that share one feature between them, tested on the whole model.

    A fit can end with one feature split between several found directions, each a few degrees
    off and each carrying part of its response, and the rest of the model adapted to that: at
    d = 16, sigmoid, n/d = 4 a feature was held by three directions 9°, 15° and 17° from it, at
    |cos| 0.85–0.99 to each other. Neither the drop test nor a local merge removes them, since
    with the rest of the model held each still pays for itself (docs/results.md, session 28).

    Every pair at |cos| > ``link`` is first collapsed locally into one ridge (:func:`_collapsed`,
    then refitted with the rest held, :func:`_group_costs`); the pairs that one ridge then
    explains within ``local`` times the pair's own error are candidates (a split feature's pairs
    cost 1.02, true clustered pairs at Δ = 0.1 and 0.3 1.5–25 at d = 16). Pairs, not
    linked groups: two split features 45° apart chain into one group through their strays. The
    cheapest disjoint candidates are collapsed at once and the whole model refitted jointly;
    the result is kept when its in-sample error is within Akaike's bar for the parameters it
    removed, 1 + ``factor`` · r (d + k) / b for r directions fewer, of the error of the model
    refitted alike (warm-started, same steps: against the model as given, extra steps alone
    passed the test and merged true pairs at d = 8, Δ = 0.1, n/d = 8), and the pairs of the new
    model are tested again (a feature split three ways takes two rounds); a rejected batch is
    retried with its cheaper half. At most ``passes`` whole-model refits. Returns the model and
    the number of directions removed.
    """
    half = slice(None, None, 2)
    removed, chosen, reference = 0, [], None
    for _ in range(passes):
        if not chosen:  # (re)test the pairs of the current model
            canonical = _canonical(model, x[half])
            v = np.asarray(ridge.unit(canonical.directions))
            pairs = list(np.argwhere(np.triu(np.abs(v @ v.T) > link, 1)))
            pairs, costs, fitted = _group_costs(canonical, x[half], y[half], pairs,
                                                collapse=True, steps=COLLAPSE_STEPS,
                                                smoothing=1e-6)
            used = set()
            for p in np.argsort(costs):
                if costs[p] >= local:
                    break
                if not used & set(pairs[p]):
                    chosen.append(p)
                    used |= set(pairs[p])
            if not chosen:
                break
        full = _canonical(model, x)
        directions, coef = np.array(full.directions), np.array(full.coef)
        for p in chosen:
            directions[pairs[p][0]], coef[pairs[p][0]] = (np.asarray(a[0]) for a in fitted[p])
        keep = np.setdiff1d(np.arange(len(directions)), [pairs[p][1] for p in chosen])
        start = _rows(full._replace(directions=jnp.asarray(directions), coef=jnp.asarray(coef)),
                      keep)
        merged = fit_ridge(start.directions, x, y, extent=extent, refine=True, start=start)
        if reference is None:  # the model refitted alike: the merge must beat more steps too
            reference = float(ridge.mse(fit_ridge(model.directions, x, y, extent=extent,
                                                  refine=True, start=model), x, y))
        bar = _aic_bar(model, x.shape[0], factor, removed=len(chosen))
        if float(ridge.mse(merged, x, y)) <= bar * reference:
            model, removed, chosen, reference = merged, removed + len(chosen), [], None
        else:  # one bad candidate spoils the batch: retry the cheaper half
            chosen = chosen[: len(chosen) // 2]
            if not chosen:
                break
    return model, removed


def _twins(v: np.ndarray, key) -> np.ndarray:
    """Each row of ``v`` moved ``SPLIT_ANGLE`` rad along a random perpendicular (unnormalised)."""
    return _moved(v, np.asarray(jax.random.normal(key, v.shape)))


def _moved(v: np.ndarray, w, angle: float = SPLIT_ANGLE) -> np.ndarray:
    """Each row of ``v`` moved ``angle`` rad along the part of ``w`` perpendicular to it."""
    w = w - np.sum(w * v, axis=1, keepdims=True) * v
    return v + np.tan(angle) * w / np.linalg.norm(w, axis=1, keepdims=True)


@jax.jit
def aims(v: Float[Array, "m d"], x: Float[Array, "b d"], residual: Float[Array, " b"]
         ) -> Float[Array, "m d"]:
    """For each unit direction u, the perpendicular w along which the residual varies most with
    x near u: where u stands for a close pair, or for one member of it, the missing member.

    A member at u cos Δ + w sin Δ that the model misses leaves, in powers of Δ, a residual
    c₁(uᵀx) wᵀx + c₂(uᵀx) (wᵀx)² + …. Its moments against functions φ of uᵀx and the part
    x⊥ of x perpendicular to u, B = E[r φ x⊥] and A = E[r φ (x⊥x⊥ᵀ − tr/(d − 1))], are ∝ w and
    ∝ wwᵀ whatever c₁ and c₂ are (x⊥ is independent of uᵀx for Gaussian queries). w is the top
    eigenvector of Σ_φ (BBᵀ + AAᵀ) over φ = He₁, He₂, He₃ of the standardised uᵀx (He₀ would
    not localise to u). Returns unit rows w.
    """
    d = v.shape[1]
    z = x @ v.T                                                      # (b, m)
    t = z / jnp.std(z, axis=0)
    phi = jnp.stack([t, t**2 - 1, t**3 - 3 * t], axis=-1) * residual[:, None, None]  # (b, m, 3)

    def one(args):
        u, p = args                                                  # (d,), (b, 3)
        proj = jnp.eye(d) - jnp.outer(u, u)
        xp = x @ proj                                                # x⊥
        b = p.T @ xp / x.shape[0]                                    # (3, d)
        a = jnp.einsum("bj,bi,bl->jil", p, xp, xp) / x.shape[0]      # (3, d, d)
        a = a - jnp.trace(a, axis1=1, axis2=2)[:, None, None] / (d - 1) * proj
        moment = b.T @ b + jnp.einsum("jil,jkl->ik", a, a)
        return jnp.linalg.eigh(moment)[1][:, -1]
    return jax.lax.map(one, (v, jnp.moveaxis(phi, 1, 0)))


def pair_costs(model: ridge.RidgeModel, x: Float[Array, "b d"], y: Float[Array, " b"], key, *,
               steps: int = PAIR_STEPS, smoothing: float = 1e-6, retry_above: float | None = None
               ) -> tuple[np.ndarray, Array, Array]:
    """What a twin adds to each direction: the mirror of :func:`drop_costs`.

    Each direction u and a twin ``SPLIT_ANGLE`` rad away, each starting with half of u's
    response, are fitted jointly to u's response plus the model's residual (:func:`_cluster_fit`,
    responses and directions), and u alone, from the same start, to the same target. Two twins
    are tried, u moved along its :func:`aims` direction and along a random perpendicular, and the
    best kept. (The aim's sign does not matter: from either side the fit carries the twin to the
    missing member, and the costs agree to 1e-3; the random twin sometimes finds a weak pair that
    the aim misses.) The cost is the ratio of the two mean squared errors of the whole model (u
    alone over the pair): ≈ 1 where u is one feature, more where u stands for a close pair whose
    second member the search missed, and the fitted twin then lies on that member.

    A pair whose members carry responses of opposite sign is harder: one ridge stands for it at
    the weight-centroid of the members' angles, outside the pair, and a twin started there can
    stop in a local optimum with both directions on that outer side. So every direction whose
    cost exceeds ``retry_above`` is fitted again from u and a twin ``PAIR_RETRY_ANGLE`` rad
    either side of it along the fitted pair's own axis, with the fitted pair's responses, and
    the best of the fits is kept (d = 16, Δ = 0.1: a ReLU pair with weights +1.49 and −0.60
    that a first fit split 2.6° and 3.9° outside the stronger member, cost 1.009, lands within
    1.8° of both members from the retry on their side, cost 1.025; docs/results.md, session 31).
    Returns the costs and the fitted pairs' directions (m, 2, d) and responses (m, 2, k).
    """
    v = np.asarray(ridge.unit(model.directions))
    m = v.shape[0]
    residual = y - ridge.predict(model, x)
    w = np.asarray(aims(jnp.asarray(v), x, residual))
    twins = np.concatenate([_moved(v, w), _twins(v, key)])                      # (2m, d)
    targets = residual[None] + ridge.responses(model, x).T                      # (m, b)
    half = model.coef / 2
    fit = functools.partial(_cluster_refits, model, x, smoothing=smoothing, steps=steps)

    def pairs(idx, second, coef):  # the pairs (v[idx], second) fitted from responses coef
        return fit(*_padded8(jnp.stack([jnp.asarray(v[idx]), jnp.asarray(second)], 1), coef,
                             targets[idx]), live=jnp.ones(2, bool))

    alone = np.asarray(fit(*_padded8(jnp.asarray(v)[:, None], half[:, None], targets),
                           live=jnp.ones(1, bool))[0][:m])

    def best_of_two(idx, with_pair):  # per row of idx: the better of its two fits
        costs = alone[idx] / np.asarray(with_pair)[: 2 * len(idx)].reshape(2, len(idx))
        return costs.max(0), np.argmax(costs, axis=0) * len(idx) + np.arange(len(idx))

    rows = np.arange(m)
    idx = np.tile(rows, 2)
    with_pair, directions, coef = pairs(idx, twins, jnp.stack([half[idx], half[idx]], 1))
    costs, best = best_of_two(rows, with_pair)
    directions, coef = directions[best], coef[best]
    retry = np.flatnonzero(costs > retry_above) if retry_above is not None else []
    if len(retry):
        first, second = np.asarray(directions[retry, 0]), np.asarray(directions[retry, 1])
        axis = first - np.sign(np.sum(first * second, 1, keepdims=True)) * second
        starts = np.concatenate([_moved(v[retry], axis, PAIR_RETRY_ANGLE),
                                 _moved(v[retry], -axis, PAIR_RETRY_ANGLE)])
        again = np.tile(retry, 2)
        with_pair, fitted, fitted_coef = pairs(again, starts, coef[again])
        retried, best = best_of_two(retry, with_pair)
        better = retried > costs[retry]
        costs[retry[better]] = retried[better]
        directions = directions.at[retry[better]].set(fitted[best[better]])
        coef = coef.at[retry[better]].set(fitted_coef[best[better]])
    return costs, directions, coef


def split_pairs(model: ridge.RidgeModel, x, y, key, *, extent: float,
                factor: float = DROP_AIC) -> tuple[ridge.RidgeModel, int]:
    """Replaces every direction whose twin pays for its parameters by the fitted pair
    (:func:`pair_costs`), then refits the model jointly, warm-started from the pairs' fits.

    The bar is :func:`drop_redundant`'s, Akaike's 1 + ``factor`` · (d + k) / b on every second
    fit query, so a twin that the drop stage would remove is not added. Unlike :func:`split`,
    which must pay off over the whole model, this finds the few pairs per hundred directions
    that a search leaves merged once the rest are separated (9 of 124 at d = 32, n/d = 4,
    Δ = 0.1: docs/results.md, footnote ¹⁹). Returns the model and the number of directions split.
    """
    half = slice(None, None, 2)
    m, d = model.directions.shape
    k = model.coef.shape[1]
    bar = _aic_bar(model, x[half].shape[0], factor)
    costs, directions, coef = pair_costs(model, x[half], y[half], key, retry_above=bar)
    pairs = np.flatnonzero(costs > bar)
    if not len(pairs):
        return model, 0
    keep = np.setdiff1d(np.arange(m), pairs)
    start = model._replace(
        directions=jnp.concatenate([model.directions[keep], directions[pairs].reshape(-1, d)]),
        coef=jnp.concatenate([model.coef[keep], coef[pairs].reshape(-1, k)]))
    return fit_ridge(start.directions, x, y, extent=extent, refine=True, start=start), len(pairs)


def _noise_share(model: ridge.RidgeModel, x, y, factor: float = DROP_AIC) -> float:
    """Akaike's bar on a response's share of var y: ``factor`` · (k − 3) · relative error /
    queries. Fitted to pure noise, a response's k − 3 free spline coefficients take (k − 3) ·
    relative error / queries of it on average; ``factor`` = 2 is Akaike's criterion."""
    k = model.coef.shape[1]
    return (_aic_bar(model, x.shape[0], factor, parameters=k - 3) - 1) * float(
        ridge.relative_mse(_padded(model), x, y))  # padded: one program as the count changes


def _keep_bar(model: ridge.RidgeModel, x, y) -> float:
    """The share of var y that a direction's response must exceed to stay in the search, the
    finishing fit's first tidying and the split stage (its twins excepted): ``PRUNE``, or the
    noise bar (:func:`_noise_share`) where that is lower, so that a direction stays when it
    carries more than ``PRUNE`` or more than noise would.

    A fixed share alone cuts the weak features of large n: a d = 8, n = 16 target's feature
    scaled to 4e-6 of var f was found in the fourth peeling round and pruned at the next
    round's fit, against a noise bar of about 3e-7 (docs/results.md, session 34). While much of
    f is unexplained the noise bar is above ``PRUNE``, which then rules as before. The search
    picks directions where its residual is largest, so its spurious finds carry a little more
    than noise (2–8e-7 of var y against a bar of 2e-7 at d = 16, n = 64). A few more reach the
    finishing fit, whose stages remove most of them: d = 8, Δ = 0.1, n = 64, seed 1 handed over
    80 candidates (63 before), ended with 68 directions for 64 (65 before), none false, and
    reached 1.000 one-to-one (0.969 before).
    """
    return min(PRUNE, _noise_share(model, x, y))


def _tidy(model: ridge.RidgeModel, x, y, *, extent: float, refine: bool,
          bar: float | np.ndarray) -> ridge.RidgeModel:
    """Drops directions without response and merges redundant ones, refitting after each.

    A direction is kept when its response, after removing what the quadratic polynomial term can
    express, carries more than ``bar`` of var f (one for all, or one per direction). Dropped
    directions can still carry responses that cancel against others or that the polynomial
    would absorb, so the model is refitted before its residual sets the merge tolerance
    (``MERGE_TOL``), and again after merging; both refits move the directions too when
    ``refine``.
    """
    m = model.directions.shape[0]
    keep = np.flatnonzero(_share(model, x, y) > bar)
    if len(keep) < m:
        model = fit_ridge(model.directions[keep], x, y, extent=extent, refine=refine)
    residual = float(ridge.relative_mse(model, x, y)) * float(jnp.var(y))
    merged = merge_redundant(model, x, tol=MERGE_TOL * residual)
    if merged.directions.shape[0] < model.directions.shape[0]:
        model = fit_ridge(merged.directions, x, y, extent=extent, refine=refine)
    return model


def prune_silent(model: ridge.RidgeModel, x, y, *, extent: float,
                 factor: float = DROP_AIC) -> tuple[ridge.RidgeModel, int]:
    """Removes the directions whose response carries no more than a fit of pure noise would give
    it, and refits the rest jointly, warm-started. The bar is Akaike's, as the drop test's: a
    response's non-polynomial share of var y (:func:`_share`) at most ``factor`` · (k − 3) ·
    relative error / queries, (k − 3) its free spline coefficients.

    The split stages can leave a direction with almost no response: d = 16, Δ = 0.1, n = 128,
    seed 1 ended with one at 4e-8 of var y (the bar: 1.9e-7), 17° from any feature, that moved
    0.8–1.5° in every convergence round. Pruned after the rounds (not before: a member just split
    off can start weak and grow there), the error at twice the query scale fell from 8.6e-5 to
    6.3e-5 of var f and the held-out error at the scale stayed at 6.0e-5 (docs/results.md,
    session 33). A bar that scales with the fit's error and queries, unlike ``PRUNE``, stays
    below every feature's share as n grows (the weakest of d = 32, n = 256 sigmoid features
    carries 4.9e-6). Returns the model and the number of directions removed.
    """
    m = model.directions.shape[0]
    keep = np.flatnonzero(_share(model, x, y) > _noise_share(model, x, y, factor))
    if len(keep) == m:
        return model, 0
    rows = _rows(model, keep)
    return fit_ridge(rows.directions, x, y, extent=extent, refine=True, start=rows), m - len(keep)


def split(model: ridge.RidgeModel, x, y, key, *, extent: float) -> tuple[ridge.RidgeModel, dict]:
    """Splits directions that stand for two features too close for any search to tell apart.

    Every direction u gets a twin at ``SPLIT_ANGLE`` rad along a random perpendicular, and the
    doubled set is refitted jointly (responses and directions), starting from the input's
    responses with silent twins: where u stands for a close pair the refinement pulls u and its
    twin onto the two members; elsewhere the twin duplicates u or dies. Silent and redundant
    directions are then removed (:func:`_tidy`). The split model replaces the input only when
    its relative error is at most ``SPLIT_GAIN`` times the input's, so targets without close
    pairs keep their fit unchanged.
    """
    v = np.asarray(model.directions)
    before = float(ridge.relative_mse(model, x, y))
    twins = _twins(v, key)
    doubled = fit_ridge(np.concatenate([v, twins]), x, y, extent=extent, refine=True, start=model)
    after = float(ridge.relative_mse(doubled, x, y))
    diag = {"split_error_before": before, "split_error_doubled": after, "split_accepted": False}
    if after > SPLIT_GAIN * before:  # tidying removes parameters: it will not gain it back
        return model, diag
    # The input's directions keep the finishing fit's bar; the twins need PRUNE: besides noise
    # they take up the fit's misfit. With the noise bar for all, the split stage of a dense cell
    # (d = 8, Δ = 0.1, n = 64) grew 73 directions to 96, against 59 to 70 at PRUNE
    # (docs/results.md, session 34).
    bar = np.repeat([_keep_bar(doubled, x, y), PRUNE], len(v))
    tidy = _tidy(doubled, x, y, extent=extent, refine=True, bar=bar)
    error = float(ridge.relative_mse(tidy, x, y))
    diag["split_error_after"] = error
    if error > SPLIT_GAIN * before:
        return model, diag
    return tidy, {**diag, "split_accepted": True,
                  "split_added": int(tidy.directions.shape[0] - v.shape[0])}


def _angles_deg(u, w) -> np.ndarray:
    """Angles (degrees) between the lines of matching rows, exact near 0 (from the chord, in
    float64, not from a float32 cosine)."""
    u, w = (np.asarray(a, np.float64) for a in (u, w))
    u, w = (a / np.linalg.norm(a, axis=-1, keepdims=True) for a in (u, w))
    chord = np.minimum(np.linalg.norm(u - w, axis=-1), np.linalg.norm(u + w, axis=-1))
    return np.degrees(2 * np.arcsin(np.minimum(chord / 2, 1.0)))


def converge(model: ridge.RidgeModel, x, y, *, steps: int = CONVERGE_STEPS,
             cluster_steps: int = CONVERGE_CLUSTER_STEPS, angle: float = CONVERGE_ANGLE,
             rounds: int = CONVERGE_ROUNDS) -> tuple[ridge.RidgeModel, dict]:
    """Rounds of fits, warm-started, until no direction moves more than ``angle`` degrees in one,
    at most ``rounds`` of them: each round refits every cluster of close directions on its own
    (:func:`refit_clusters`, ``cluster_steps`` Levenberg–Marquardt steps; 0: none), then the
    whole model jointly (responses and directions, ``steps`` L-BFGS steps).

    A fixed number of steps stops short where the loss is flat along a direction: a weak
    response whose quadratic part the polynomial term takes (sigmoid, a = 0.53, at d = 16,
    n = 64) kept 2.8° of error after the stages' fits, against a Cramér–Rao bound of 0.60°, and
    reached 0.7° after 300 more steps. Close pairs are flat along their difference: at d = 16,
    Δ = 0.1, n = 64, joint fits alone still moved 0.18° in the tenth round and 0.06° in the
    thirtieth (mean angle 0.51° → 0.29° → 0.25°); with the cluster refits the rounds converge in
    four, at 0.25° (docs/results.md, session 32). Returns the model and diagnostics: rounds
    run, the last round's largest move (degrees), whether it converged.
    """
    m = model.directions.shape[0]
    padded = _padded(model)
    active = jnp.arange(padded.directions.shape[0]) < m
    done, moved = 0, np.inf
    while done < rounds and moved > angle:
        start = padded
        if cluster_steps:
            rows, _ = refit_clusters(_rows(padded, slice(0, m)), x, y, steps=cluster_steps)
            start = padded._replace(directions=padded.directions.at[:m].set(rows.directions),
                                    coef=padded.coef.at[:m].set(rows.coef))
        fitted = ridge.fit(start, x, y, directions=True, steps=steps, active=active)
        moved = float(np.max(_angles_deg(fitted.directions[:m], padded.directions[:m]),
                             initial=0.0))
        padded, done = fitted, done + 1
    diag = {"converge_rounds": done, "converge_moved_deg": moved, "converged": moved <= angle}
    return _rows(padded, slice(0, m)), diag


def polish(model: ridge.RidgeModel, x, y, pool: tuple[Array, Array], *, extent: float,
           target: float = POLISH_TARGET) -> tuple[ridge.RidgeModel, dict]:
    """Refits ``model`` (fitted on ``x, y``) on more queries when its variance calls for it: the
    finishing fit's error at noise η carries a variance term ≈ η²·p/Q of var f (p parameters,
    Q queries), which at η = 0.1 sets the error and the angles, not the search.

    ``pool`` holds queries that the search drew (the last ``POLISH_HOLDOUT`` of them at the
    query scale), independent of ``x, y``. The variance term V is measured by halving: the model
    refitted (warm-started) on every second query has error bias + 2V on the pool against the
    model's bias + V, so their difference is V, in units of the pool's variance, with no
    parameter count assumed; the pool's noise is common to both and cancels. When
    V > ``target`` the model is refitted jointly (warm-started) on ``x, y`` plus the first
    ⌈Q·(V/target − 1)⌉ of the pool (at most all but its last ``POLISH_HOLDOUT``, a fifth at
    most; :func:`ridge.fit` chunks them, so memory stays flat), and the refit is kept only when
    its error on those held-out queries is lower. ``target`` 0 refits on all but the held-out
    ones whenever V > 0: the directions' error is then the fit's variance alone, at the
    Cramér–Rao bound of the whole budget (:func:`angle_bounds`). Returns the model and
    diagnostics.
    """
    px, py = pool
    scale = float(jnp.var(py))

    def error(m, xs, ys) -> float:
        return float(ridge.mse(m, xs, ys)) / scale

    half = fit_ridge(model.directions, x[::2], y[::2], extent=extent, refine=True, start=model)
    variance = max(0.0, error(half, px, py) - error(model, px, py))
    hold = min(POLISH_HOLDOUT, px.shape[0] // 5)
    xh, yh = px[px.shape[0] - hold:], py[py.shape[0] - hold:]
    extra = px.shape[0] - hold
    if target > 0:
        extra = min(extra, int(np.ceil(x.shape[0] * (variance / target - 1))))
    diag = {"polish_variance": variance, "polish_queries": 0, "polish_accepted": False}
    if variance <= target or extra <= 0:
        return model, diag
    grown = fit_ridge(model.directions, jnp.concatenate([x, px[:extra]]),
                      jnp.concatenate([y, py[:extra]]), extent=extent, refine=True, start=model)
    before, after = error(model, xh, yh), error(grown, xh, yh)
    diag.update(polish_queries=int(x.shape[0] + extra), polish_error_before=before,
                polish_error_after=after)
    if after >= before:
        return model, diag
    return grown, {**diag, "polish_accepted": True}


def finish(oracle: Oracle, key, candidates: Float[Array, "m d"], config: RecoveryConfig,
           progress: Callable[[str], None] | None = None,
           pool: tuple[Array, Array] | None = None) -> tuple[Array, ridge.RidgeModel, dict]:
    """Fits the ridge model on fresh queries, refines it, drops empty or redundant directions,
    splits merged close pairs, refines the result once more (warm-started), drops directions
    that their close neighbours can take over (:func:`drop_redundant`, with ``config.drop``)
    and merges those that share a feature (:func:`collapse_split`), splits the pairs still
    merged one direction at a time (:func:`split_pairs`), runs the joint fit to convergence
    (:func:`converge`) and prunes the directions left without a response (:func:`prune_silent`).

    Spurious candidates end with quadratic responses (~1e-7 of var f, against ≥ 1e-4 for true
    directions at noise 0.01) and are pruned. Close directions are merged only when one ridge
    reproduces both within a tenth of the fit's residual, never by angle alone: a clustered pair
    at Δ = 0.1 rad (|cos| 0.995) that the search separated is two features, a candidate found
    twice is one (:func:`_tidy`). With ``config.split`` the result then goes through
    :func:`split`. With ``config.polish`` and the search's unused ``pool`` of queries, the
    result is refitted on as many of them as its measured variance calls for (:func:`polish`).
    ``progress`` gets a line per stage: directions, relative error, seconds.
    """
    start = time.perf_counter()

    def say(stage: str) -> None:
        if progress:
            error = float(ridge.relative_mse(model, x, y))
            progress(f"finish: {stage}: {model.directions.shape[0]} directions, relative error "
                     f"{error:.3g} ({time.perf_counter() - start:.0f} s)")

    x, y = _fit_queries(oracle, key, config.fit_queries, config.scale)
    extent = 9.0 * config.scale
    model = fit_ridge(candidates, x, y, extent=extent, refine=config.refine)
    say(f"fit of {candidates.shape[0]} candidates on {config.fit_queries} fresh queries")
    if candidates.shape[0]:
        model = _tidy(model, x, y, extent=extent, refine=False, bar=_keep_bar(model, x, y))
        say("silent and duplicate directions removed")
    diag = {}
    if config.split and model.directions.shape[0]:
        model, diag = split(model, x, y, jax.random.fold_in(key, 1), extent=extent)
        say("split stage " + ("accepted" if diag["split_accepted"] else "rejected"))
    if config.refine and model.directions.shape[0]:
        # The fits above end short of the optimum (the tidy refits start cold, the joint ones
        # stop after 100 steps): one more joint fit from the result converges. At d = 16 it
        # lowered the error at twice the query scale up to 2.5× and halved the mean angle.
        model = fit_ridge(model.directions, x, y, extent=extent, refine=True, start=model)
        say("joint refit")
        if config.drop:
            model, diag["dropped"] = drop_redundant(model, x, y, extent=extent)
            say(f"{diag['dropped']} redundant dropped")
            model, diag["collapsed"] = collapse_split(model, x, y, extent=extent)
            say(f"{diag['collapsed']} directions of split features collapsed")
        if config.split:
            # Pairs still merged, one at a time; then the new pairs' clusters face the drop test.
            model, pairs = split_pairs(model, x, y, jax.random.fold_in(key, 2), extent=extent)
            diag["pairs_split"] = pairs
            say(f"{pairs} merged pairs split")
            if pairs and config.drop:
                m = model.directions.shape[0]
                model, dropped = drop_redundant(model, x, y, extent=extent,
                                                only=np.arange(m - 2 * pairs, m))
                diag["dropped"] += dropped
                say(f"{dropped} more dropped")
        model, converged = converge(model, x, y)
        diag.update(converged)
        say((f"converged in {converged['converge_rounds']} joint fits" if converged["converged"]
             else f"not converged in {converged['converge_rounds']} joint fits")
            + f" (last moved {converged['converge_moved_deg']:.2g}°)")
        model, diag["pruned"] = prune_silent(model, x, y, extent=extent)
        if diag["pruned"]:
            say(f"{diag['pruned']} silent directions pruned")
        if config.polish and pool is not None and model.directions.shape[0]:
            model, polished = polish(model, x, y, pool, extent=extent,
                                     target=config.polish_target)
            diag.update(polished)
            outcome = ("no refit" if not polished["polish_queries"] else
                       f"refit on {polished['polish_queries']} queries "
                       + ("kept" if polished["polish_accepted"] else "rejected"))
            say(f"polish: fit variance {polished['polish_variance']:.2g} of var y, {outcome}")
    return model.directions, model, diag


def recover(oracle: Oracle, method: str, key, config: RecoveryConfig = RecoveryConfig(),
            progress: Callable[[str], None] | None = None, *, d: int | None = None
            ) -> RecoveryResult:
    """Runs one method end to end under the oracle's budget.

    ``d``, when given, is the input dimension the caller expects; a different oracle is refused.
    """
    _checks.one_of("method", method, METHODS)
    if d is not None and d != oracle.d:
        raise ValueError(f"the request is for d = {d} but the oracle takes d = {oracle.d} inputs")
    if oracle.budget is not None and oracle.remaining < config.budget:
        raise QueryBudgetExceeded(f"config.budget ({config.budget}) exceeds the oracle's remaining "
                                  f"budget ({oracle.remaining})")
    start, used = time.perf_counter(), oracle.queries
    ks, kf = jax.random.split(key)
    candidates, diag = SEARCHES[method](oracle, ks, config, progress=progress)
    pool = diag.pop("queries", None)
    directions, model, split_diag = finish(oracle, kf, candidates, config, progress, pool)
    diag = {**diag, **split_diag, "candidates": np.asarray(candidates)}
    return RecoveryResult(directions, model, oracle.queries - used, time.perf_counter() - start,
                          diag)


# ----------------------------------------------------------------------------- scoring

def score(target: Target, result: RecoveryResult, key, *, test: int = 20_000) -> dict[str, Any]:
    """The metrics of query-recovery.md §7 against the true target (non-degenerate directions),
    and each one's matched angle."""
    # In float64 throughout: a float32 |cos| resolves angles only to ~0.02° (1 − cos ≈ θ²/2).
    def unit(a):
        a = np.asarray(a, np.float64).reshape(-1, target.directions.shape[1])
        return a / np.linalg.norm(a, axis=-1, keepdims=True)
    every = unit(target.directions)
    v = every[~np.asarray(target.degenerate)]
    found = unit(result.directions)
    matched = np.zeros(len(v))
    if len(found):
        cos = np.abs(v @ found.T)
        # A found degenerate direction (e.g. of a z³ term) is real, just not required: not false.
        best_true, best_found = cos.max(1), np.abs(every @ found.T).max(0)
        rows, cols = linear_sum_assignment(cos, maximize=True)
        matched[rows] = cos[rows, cols]
    else:
        best_true, best_found = np.zeros(len(v)), np.zeros(0)
    angles = np.arccos(np.clip(matched, 0, 1))
    x = jax.random.normal(key, (test, target.directions.shape[1]))
    return {
        "recovery_rate_099": float(np.mean(best_true >= 0.99)),
        "recovery_rate_095": float(np.mean(best_true >= 0.95)),
        # One found direction per true one (Hungarian): a found direction between two close true
        # ones can count for both in the rates above, but only once here.
        "matched_rate_099": float(np.mean(matched >= 0.99)),
        "false_directions": int(np.sum(best_found < 0.9)),
        "found_directions": len(found),
        "mean_angle_deg": float(np.degrees(np.mean(angles))),
        # The RMS of the same angles: what :func:`angle_bounds` bounds.
        "rms_angle_deg": float(np.degrees(np.sqrt(np.mean(angles**2)))),
        "angles_deg": np.degrees(angles).tolist(),  # per true direction, in the target's order
        "f_rel_mse": float(ridge.relative_mse(result.model, x, evaluate(target, x))),
        "f_rel_mse_2x": float(ridge.relative_mse(result.model, 2 * x, evaluate(target, 2 * x))),
        "queries": result.queries,
        "seconds": result.seconds,
    }


def angle_bounds(target: Target, noise: float, key, *, budget: int, fit_queries: int,
                 reused: int = 0, scale: float = 1.0, samples: int | None = None
                 ) -> dict[str, np.ndarray]:
    """What the queries allow: for each non-degenerate true direction, the RMS angle (radians)
    that no unbiased estimate in the finishing fit's model class can beat
    (:func:`ridge.angle_stderr`, evaluated at the truth), at noise standard deviation ``noise``.

    ``"fit"``: on the finishing fit's design (``fit_queries``, half at s and half at 2s, plus
    ``reused`` of the search's queries at s that :func:`polish` refitted on); ``"budget"``: on
    every query of the run (the search's ``budget − fit_queries`` at s, as the Fourier search
    draws them, and the fit's), as if all of them informed the directions. A method at
    ``"fit"`` loses nothing in its fit; the distance from there to ``"budget"`` is what the
    search's queries could add. Both hold for these query distributions (a design chosen
    otherwise, e.g. adaptively, can do better). The information per query
    is estimated from ``samples`` random queries per scale (default 16 per parameter; the
    inverse of a sample mean overstates the variance by about parameters / samples).
    """
    v = np.asarray(target.directions)[~np.asarray(target.degenerate)]
    kx, ks, k2 = jax.random.split(key, 3)
    # The truth in the fit's model class: its responses by a noiseless fit along its directions.
    x = _fit_design(kx, fit_queries, v.shape[1], scale)
    truth = ridge.fit(ridge.init(jnp.asarray(v), extent=9.0 * scale), x, evaluate(target, x),
                      steps=300)
    samples = samples or 16 * ridge.parameters(truth)
    per = [ridge.information(truth, s * scale * jax.random.normal(k, (samples, v.shape[1])))
           / samples for s, k in ((1.0, ks), (2.0, k2))]
    fit = (fit_queries - fit_queries // 2 + reused) * per[0] + fit_queries // 2 * per[1]
    every = fit + (budget - fit_queries - reused) * per[0]
    return {"fit": ridge.angle_stderr(truth, fit, noise),
            "budget": ridge.angle_stderr(truth, every, noise)}
