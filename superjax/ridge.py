"""Ridge-function models f̂(x) = Σ_j σ̂_j(v̂_jᵀx) + p(x), fitted by least squares on queries.

σ̂_j is a uniform cubic B-spline on [lo, hi] (clamped outside), p a polynomial of degree ≤ 2 that
holds the degenerate (low-degree polynomial) part of f, which no direction method can see. The
model is a pytree; :func:`fit` solves the least-squares problem with L-BFGS, either for the
responses only (directions fixed: a convex problem) or jointly with the directions (the optional
refinement of query-recovery.md §5). Evaluation is a gather of four spline coefficients per
direction, so a fit costs O(queries · directions · d) per iteration and never forms the design
matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
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


def init(directions: Float[Array, "m d"], *, knots: int = 24, extent: float = 9.0) -> RidgeModel:
    """A zero model on ``directions`` with ``knots`` spline coefficients on [−extent, extent]."""
    m, d = directions.shape
    return RidgeModel(jnp.asarray(directions, jnp.float32), jnp.zeros((m, knots)), jnp.zeros(()),
                      jnp.zeros(d), jnp.zeros((d, d)), jnp.asarray(-extent), jnp.asarray(extent))


def _bspline_weights(u: Array) -> tuple[Array, Array]:
    """Index of the first of the four active uniform cubic B-splines and their weights at u."""
    i = jnp.floor(u)
    t = u - i
    w = jnp.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1,
                   t**3], axis=-1) / 6.0
    return i.astype(jnp.int32), w


def unit(v: Float[Array, "m d"]) -> Float[Array, "m d"]:
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def responses(model: RidgeModel, x: Float[Array, "b d"]) -> Float[Array, "b m"]:
    """σ̂_j(v̂_jᵀx) for every direction j."""
    k = model.coef.shape[1]
    z = x @ unit(model.directions).T
    # Spline j lives on k − 3 intervals of [lo, hi]; clamp so that the spline is constant outside.
    u = (jnp.clip(z, model.lo, model.hi) - model.lo) / (model.hi - model.lo) * (k - 3)
    i, w = _bspline_weights(jnp.minimum(u, k - 3 - 1e-6))
    idx = i[..., None] + jnp.arange(4)                       # (b, m, 4)
    c = jnp.take_along_axis(model.coef[None], idx, axis=2)   # (b, m, 4)
    return jnp.sum(c * w, axis=-1)


def polynomial(model: RidgeModel, x: Float[Array, "b d"]) -> Float[Array, " b"]:
    q = 0.5 * (model.quad + model.quad.T)
    return model.const + x @ model.linear + jnp.sum((x @ q) * x, axis=-1)


def predict(model: RidgeModel, x: Float[Array, "b d"]) -> Float[Array, " b"]:
    """f̂(x)."""
    return jnp.sum(responses(model, x), axis=-1) + polynomial(model, x)


def _loss(model, x, y):
    return jnp.mean((predict(model, x) - y) ** 2)


def fit(model: RidgeModel, x: Float[Array, "b d"], y: Float[Array, " b"], *,
        directions: bool = False, steps: int = 300) -> RidgeModel:
    """Least squares for the responses (and the directions when ``directions``) by L-BFGS.

    The loss is scaled by 1/var(y) so that the line search's tolerances are scale-free.
    """
    scale = 1.0 / jnp.maximum(jnp.var(y), 1e-12)
    frozen = jax.tree.map(lambda _: False, model)._replace(
        directions=not directions, lo=True, hi=True)
    loss = lambda p: scale * _loss(p, x, y)  # noqa: E731
    tx = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        grad = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grad, frozen)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), value

    (model, _), _ = jax.lax.scan(body, (model, tx.init(model)), None, length=steps)
    return model._replace(directions=unit(model.directions))


fit = jax.jit(fit, static_argnames=("directions", "steps"))


def relative_mse(model: RidgeModel, x, y) -> Float[Array, ""]:
    """mean (f̂ − f)² / var f."""
    return _loss(model, x, y) / jnp.var(y)
