"""Ridge-function models f̂(x) = Σ_j σ̂_j(v̂_jᵀx) + p(x), fitted by least squares on queries.

σ̂_j is a uniform cubic B-spline on [lo, hi] (clamped outside), p a polynomial of degree ≤ 2 that
holds the degenerate (low-degree polynomial) part of f, which no direction method can see. The
model is a pytree; :func:`fit` solves the least-squares problem with L-BFGS, either for the
responses only (directions fixed: a convex problem) or jointly with the directions (the optional
refinement of query-recovery.md §5). Evaluation is a gather of four spline coefficients per
direction, so a fit costs O(queries · directions · d) per iteration and never forms the design
matrix; beyond ``CHUNK`` queries it runs over chunks of them, so its memory does not grow with
the query count.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float


class RidgeModel(NamedTuple):
    directions: Float[Array, "m d"]  # normalised on use
    coef: Float[Array, "m k"]        # B-spline coefficients per direction
    const: Float[Array, ""]
    linear: Float[Array, " d"]
    quad: Float[Array, "d d"]        # symmetrised on use
    lo: Float[Array, ""]
    hi: Float[Array, ""]


def init(directions: Float[Array, "m d"], *, knots: int = 48, extent: float = 9.0) -> RidgeModel:
    """A zero model on ``directions`` with ``knots`` spline coefficients on [−extent, extent]."""
    m, d = directions.shape
    return RidgeModel(jnp.asarray(directions, jnp.float32), jnp.zeros((m, knots)), jnp.zeros(()),
                      jnp.zeros(d), jnp.zeros((d, d)), jnp.asarray(-extent, jnp.float32),
                      jnp.asarray(extent, jnp.float32))


def _bspline_weights(u: Array, k: int) -> tuple[Array, Array]:
    """Index of the first of the four active uniform cubic B-splines and their weights at u.

    u ∈ [0, k − 3]; the last interval is closed (index clamped, not u, so no float32 rounding can
    push the index out of the k coefficients).
    """
    i = jnp.clip(jnp.floor(u), 0, k - 4)
    t = u - i
    w = jnp.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1,
                   t**3], axis=-1) / 6.0
    return i.astype(jnp.int32), w


def unit(v: Float[Array, "m d"]) -> Float[Array, "m d"]:
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def _knots(model: RidgeModel, z: Array) -> tuple[Array, Array]:
    """Spline position of projections z: the first active coefficient and the four weights."""
    k = model.coef.shape[1]
    # Spline j lives on k − 3 intervals of [lo, hi]; clamp so that the spline is constant outside.
    u = (jnp.clip(z, model.lo, model.hi) - model.lo) / (model.hi - model.lo) * (k - 3)
    return _bspline_weights(u, k)


def spline(model: RidgeModel, z: Float[Array, "b m"]) -> Float[Array, "b m"]:
    """σ̂_j(z_j) for every direction j, at projections z (column j on direction j)."""
    i, w = _knots(model, z)
    # One 4-wide window of coefficients per (query, direction): a gather of contiguous slices,
    # whose transpose (a windowed scatter-add) is much cheaper than four scalar gathers on CPU.
    window = lambda row, start: jax.lax.dynamic_slice(row, (start,), (4,))  # noqa: E731
    c = jax.vmap(jax.vmap(window), in_axes=(None, 0))(model.coef, i)       # (b, m, 4)
    return jnp.sum(c * w, axis=-1)


def responses(model: RidgeModel, x: Float[Array, "b d"]) -> Float[Array, "b m"]:
    """σ̂_j(v̂_jᵀx) for every direction j."""
    return spline(model, x @ unit(model.directions).T)


def basis(model: RidgeModel, z: Float[Array, "b m"]) -> Float[Array, "b m k"]:
    """The B-spline basis at projections z: ``spline(model, z) = Σ_k basis · coef``. Dense (a
    sum of one-hot rows, no scatter), for solvers that need the design matrix itself."""
    k = model.coef.shape[1]
    i, w = _knots(model, z)
    return jnp.sum(jax.nn.one_hot(i[..., None] + jnp.arange(4), k, dtype=w.dtype)
                   * w[..., None], axis=-2)


def polynomial(model: RidgeModel, x: Float[Array, "b d"]) -> Float[Array, " b"]:
    q = 0.5 * (model.quad + model.quad.T)
    return model.const + x @ model.linear + jnp.sum((x @ q) * x, axis=-1)


def predict(model: RidgeModel, x: Float[Array, "b d"]) -> Float[Array, " b"]:
    """f̂(x)."""
    return jnp.sum(responses(model, x), axis=-1) + polynomial(model, x)


#: Fits and errors on more queries than this run as a scan over chunks of it, rematerialised in
#: the backward pass, so their memory is O(CHUNK · directions) at any query count (unchunked,
#: 128 directions on 7.8·10⁵ queries peaked at 10 GB).
CHUNK = 65_536


def _chunks(*arrays: Array) -> tuple[Array, ...]:
    """Arrays sharing a leading query axis, zero-padded to whole chunks and stacked (c, CHUNK,
    ...), and a last one: each row's weight (1, or 0 for padding)."""
    q = arrays[0].shape[0]
    pad = (-q) % CHUNK

    def stack(a):
        return jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(-1, CHUNK, *a.shape[1:])
    return (*(stack(a) for a in arrays), stack(jnp.ones(q, arrays[0].dtype)))


def _queries(x: Array, y: Array) -> tuple[Array, ...]:
    """The queries as :func:`_mean_sq` takes them: (x, y) up to ``CHUNK`` of them, else their
    :func:`_chunks` (x, y, weight). A fit prepares them once, outside its iterations."""
    return (x, y) if x.shape[0] <= CHUNK else _chunks(x, y)


def _mean_sq(model: RidgeModel, queries: tuple[Array, ...], q: int) -> Array:
    """mean (f̂ − y)² over ``q`` queries prepared by :func:`_queries`."""
    if len(queries) == 2:
        x, y = queries
        return jnp.mean((predict(model, x) - y) ** 2)
    part = jax.checkpoint(lambda m, xc, yc, wc: jnp.sum(wc * (predict(m, xc) - yc) ** 2))
    total, _ = jax.lax.scan(lambda t, c: (t + part(model, *c), None), jnp.zeros(()), queries)
    return total / q


def _loss(model, x, y):
    return _mean_sq(model, _queries(x, y), x.shape[0])


def roughness(model: RidgeModel) -> Float[Array, ""]:
    """Σ_j Σ_k (Δ²c_jk)²: the P-spline penalty (Eilers & Marx 1996); zero on linear responses."""
    return jnp.sum(jnp.diff(model.coef, n=2, axis=1) ** 2)


def _preconditioner(model: RidgeModel, x: Float[Array, "b d"]) -> RidgeModel:
    """Square roots of the diagonal of the normal matrix, per parameter (Jacobi scaling).

    Edge spline coefficients see few queries and polynomial terms have very different scales;
    without this scaling L-BFGS stalls far from the least-squares optimum.
    """
    m, k = model.coef.shape

    def coef_diag(xc, wc):  # Σ over the queries of each spline coefficient's squared weight
        i, w = _knots(model, xc @ unit(model.directions).T)
        flat = (i[..., None] + jnp.arange(4) + (jnp.arange(m) * k)[None, :, None]).reshape(-1)
        return jnp.zeros(m * k).at[flat].add((wc[:, None, None] * w**2).reshape(-1))

    if x.shape[0] <= CHUNK:
        total = coef_diag(x, jnp.ones(x.shape[0]))
    else:
        total, _ = jax.lax.scan(lambda t, c: (t + coef_diag(*c), None), jnp.zeros(m * k),
                                _chunks(x))
    diag = total.reshape(m, k) / x.shape[0]
    x2 = x**2
    one = lambda a: jnp.ones_like(a)  # noqa: E731
    return RidgeModel(one(model.directions), jnp.sqrt(diag + 1e-6), one(model.const),
                      jnp.sqrt(jnp.mean(x2, 0)), jnp.sqrt(x2.T @ x2 / x.shape[0]),
                      one(model.lo), one(model.hi))


def fit(model: RidgeModel, x: Float[Array, "b d"], y: Float[Array, " b"], *,
        directions: bool = False, steps: int = 300, smoothing: float = 1e-6,
        active: Array | None = None) -> RidgeModel:
    """Least squares for the responses (and the directions when ``directions``) by L-BFGS.

    Minimises [mean (f̂ − y)² + smoothing · :func:`roughness`] / var(y). The roughness penalty
    keeps splines from fitting noise where few queries fall (their ends, where it also makes them
    extrapolate linearly) and stops spare directions from absorbing overfitting. L-BFGS runs on
    Jacobi-scaled parameters (:func:`_preconditioner`); dividing by var(y) makes its line-search
    tolerances scale-free.
    """
    scale = 1.0 / jnp.maximum(jnp.var(y), 1e-12)
    m = model.coef.shape[0]
    live = jnp.ones(m) if active is None else jnp.asarray(active, jnp.float32)
    # Gradient mask: padding rows (active False) stay exactly zero, so callers can bucket the
    # number of directions and reuse one compiled fit; ``directions`` and ``steps`` are traced
    # too, so one program serves the response-only and the joint fit at any length.
    moves = jnp.asarray(directions, jnp.float32)
    mask = jax.tree.map(jnp.ones_like, model)._replace(
        directions=live[:, None] * moves * jnp.ones_like(model.directions),
        coef=live[:, None] * jnp.ones_like(model.coef), lo=jnp.zeros(()), hi=jnp.zeros(()))
    pre = _preconditioner(model, x)
    queries = _queries(x, y)

    def loss(p):
        model = jax.tree.map(jnp.divide, p, pre)
        return scale * (_mean_sq(model, queries, x.shape[0]) + smoothing * roughness(model))

    tx = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        grad = jax.tree.map(jnp.multiply, grad, mask)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    start = jax.tree.map(jnp.multiply, model, pre)
    params, _ = jax.lax.fori_loop(0, steps, body, (start, tx.init(start)))
    model = jax.tree.map(jnp.divide, params, pre)
    return model._replace(directions=unit(model.directions))


fit = jax.jit(fit)


def _own_quadratics(model: RidgeModel, x: Float[Array, "b d"]):
    """Each response, the powers {1, z, z²} of its projection, and their least-squares fit to
    it over ``x``: (responses (b, m), powers (b, m, 3), coefficients (m, 3))."""
    resp = responses(model, x)
    z = x @ unit(model.directions).T
    basis = jnp.stack([jnp.ones_like(z), z, z**2], axis=-1)               # (b, m, 3)
    gram = jnp.einsum("bmi,bmj->mij", basis, basis)
    coef = jnp.linalg.solve(gram, jnp.einsum("bmi,bm->mi", basis, resp)[..., None])[..., 0]
    return resp, basis, coef


def nonpolynomial_share(model: RidgeModel, x: Float[Array, "b d"]) -> Float[Array, " m"]:
    """Variance of each response left after regressing out {1, z, z²} along its own direction.

    A quadratic response along any direction is also a polynomial of x, so it duplicates the
    polynomial term and says nothing about the direction; only this remainder does.
    """
    resp, basis, coef = _own_quadratics(model, x)
    return jnp.var(resp - jnp.einsum("bmi,mi->bm", basis, coef), axis=0)


def quadratic_coef(model: RidgeModel) -> Float[Array, "k 3"]:
    """The spline coefficients of 1, z and z² on [lo, hi] (columns): a response a + b·z + c·z²
    has coefficients ``quadratic_coef(model) @ [a, b, c]`` (exact: cubic B-splines hold every
    quadratic; least squares on a grid of 4k points)."""
    k = model.coef.shape[1]
    grid = jnp.linspace(model.lo, model.hi, 4 * k)
    design = basis(model, grid[:, None])[:, 0]                             # (4k, k)
    powers = jnp.stack([jnp.ones_like(grid), grid, grid**2], axis=-1)      # (4k, 3)
    return jnp.linalg.lstsq(design, powers)[0]


def canonical(model: RidgeModel, x: Float[Array, "b d"]) -> RidgeModel:
    """The same function with each response's {1, z, z²} part (least squares over ``x``, along
    its own direction) moved into the polynomial term.

    That part is not identifiable: a + b·vᵀx + c·(vᵀx)² is also p(x), and a fit leaves it split
    between the spline and p however its start and steps fall. Nearly linear responses (sigmoid
    at small slopes) then carry most of their variance in it. In this form every response is
    orthogonal over ``x`` to the quadratics along its direction, so its variance is
    :func:`nonpolynomial_share`, and dropping a direction leaves its polynomial part in p. The
    spline space holds every quadratic on [lo, hi], so f̂ changes only where |vᵀx| > hi.
    """
    _, _, coef = _own_quadratics(model, x)                                 # (m, 3)
    u = unit(model.directions)
    return model._replace(
        coef=model.coef - coef @ quadratic_coef(model).T,
        const=model.const + jnp.sum(coef[:, 0]),
        linear=model.linear + coef[:, 1] @ u,
        quad=model.quad + jnp.einsum("m,mi,mj->ij", coef[:, 2], u, u))


#: :func:`angle_stderr`: directions whose information, net of the other parameters, is below this
#: share of the largest a direction has with them known are undetermined (float32 Jacobians).
RESOLVED = 1e-6


def _tangent_bases(v: Float[Array, "m d"]) -> Float[Array, "m d-1 d"]:
    """Orthonormal bases of each unit row's complement: rows 2…d of the Householder reflection
    that maps v to ∓e₁ (its first row is ±v; the sign keeps it away from cancellation)."""
    sign = jnp.where(v[:, :1] >= 0, 1.0, -1.0)
    u = unit(v + sign * jnp.eye(v.shape[1])[0])
    return (jnp.eye(v.shape[1]) - 2 * u[:, :, None] * u[:, None, :])[:, 1:]


def parameters(model: RidgeModel) -> int:
    """The number of columns of :func:`jacobian`: the model's identifiable parameters."""
    (m, d), k = model.directions.shape, model.coef.shape[1]
    return m * (d - 1) + m * (k - 3) + 1 + d + d * (d + 1) // 2


def jacobian(model: RidgeModel, x: Float[Array, "b d"]) -> Float[Array, "b p"]:
    """∂f̂(x)/∂θ for the model's parameters θ in an identifiable form: first each direction's
    d − 1 tangent coordinates (v̂_j moved to unit(v̂_j + B_jᵀt), B_j a basis of v̂_j^⊥), then
    each spline's coefficients without their {1, z, z²} part (the polynomial term holds that:
    :func:`canonical`), then the polynomial's 1, x and x_i x_j (i ≤ j)."""
    m, d = model.directions.shape
    v = unit(model.directions)
    z = x @ v.T
    slope = jax.jvp(lambda z: spline(model, z), (z,), (jnp.ones_like(z),))[1]   # σ̂_j'(z_j)
    tangent = slope[:, :, None] * jnp.einsum("mkd,bd->bmk", _tangent_bases(v), x)
    # The spline space holds every quadratic on [lo, hi]: keep its orthogonal complement only.
    free = jnp.linalg.svd(quadratic_coef(model), full_matrices=True)[0][:, 3:]   # (k, k − 3)
    i, j = jnp.triu_indices(d)
    return jnp.concatenate([tangent.reshape(x.shape[0], -1),
                            (basis(model, z) @ free).reshape(x.shape[0], -1),
                            jnp.ones((x.shape[0], 1)), x, x[:, i] * x[:, j]], axis=1)


def information(model: RidgeModel, x: Float[Array, "b d"], *, chunk: int = 4096) -> np.ndarray:
    """Σ over the queries ``x`` of J Jᵀ (J = :func:`jacobian`): the Fisher information of the
    least-squares fit on them per unit noise variance, in float64 on the host (it is additive:
    designs combine by sums and scale with their query count)."""
    d = model.directions.shape[1]
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (queries, {d}) for a model in d = {d}, "
                         f"got {x.shape}")
    total = None
    for start in range(0, x.shape[0], chunk):
        rows = x[start:start + chunk]
        part = np.asarray(_jacobian(model, jnp.pad(rows, ((0, chunk - rows.shape[0]), (0, 0)))),
                          np.float64)[: rows.shape[0]]
        total = part.T @ part if total is None else total + part.T @ part
    return total


def angle_stderr(model: RidgeModel, info: np.ndarray, noise: float, *,
                 rcond: float = 1e-12) -> np.ndarray:
    """The asymptotic standard error of each direction of a least-squares fit of ``model`` with
    Fisher information ``info`` (:func:`information`) at noise standard deviation ``noise``:
    sqrt E‖v̂_j − v_j‖² (the RMS angle, radians) with every response and the polynomial unknown.

    It is the Cramér–Rao bound for unbiased estimates of the directions from those queries in
    this model class, evaluated at ``model``, and the fit's own error when it converges (a
    nonlinear least-squares fit is asymptotically efficient under Gaussian noise). A direction
    the queries cannot pin down (a quadratic response: its slope is linear, which the polynomial
    term fits as well) gets ∞.
    """
    m, d = model.directions.shape
    t, p = m * (d - 1), parameters(model)
    if np.shape(info) != (p, p):
        raise ValueError(f"info has shape {np.shape(info)}, not ({p}, {p}) as information(model, "
                         f"x) has for {m} directions in d = {d}")
    # Schur complement of the nuisance block (responses, polynomial): the directions' information
    # once everything else is fitted too. Spline coefficients no query reaches span its null space.
    w, u = np.linalg.eigh(info[t:, t:])
    keep = w > rcond * w.max()
    cross = info[:t, t:] @ u[:, keep]
    schur = info[:t, :t] - (cross / w[keep]) @ cross.T
    lam, vec = np.linalg.eigh(schur)
    weight = (vec**2).reshape(m, d - 1, t).sum(1)                          # (m, eigenvalues)
    # Float32 Jacobians resolve the information left to ~1e-7 of what it was with everything
    # else known: below RESOLVED of that a direction counts as undetermined.
    null = lam <= RESOLVED * np.max(np.diag(info)[:t])
    var = weight[:, ~null] @ (1.0 / lam[~null])
    var[(weight[:, null] > 1e-6).any(1)] = np.inf
    return noise * np.sqrt(var)


def mse(model: RidgeModel, x, y) -> Float[Array, ""]:
    """mean (f̂ − y)²."""
    return _loss(model, x, y)


def relative_mse(model: RidgeModel, x, y) -> Float[Array, ""]:
    """mean (f̂ − f)² / var f."""
    return _loss(model, x, y) / jnp.var(y)


# Called on every fit's result: one compiled program each instead of op-by-op dispatch.
predict, responses, nonpolynomial_share, canonical, mse, relative_mse = (
    jax.jit(f) for f in (predict, responses, nonpolynomial_share, canonical, mse, relative_mse))
_jacobian = jax.jit(jacobian)
