"""Ridge reconstruction: B-spline algebra, the least-squares optimum, joint refinement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superjax import oracle as O
from superjax import ridge


def test_bspline_partition_of_unity_and_cubic_reproduction():
    # Uniform cubic B-splines sum to 1 and reproduce every cubic exactly on [lo, hi].
    v = jnp.eye(3)[:1]
    model = ridge.init(v, knots=12, extent=3.0)
    x = jnp.stack([jnp.linspace(-2.9, 2.9, 101), jnp.zeros(101), jnp.zeros(101)], 1)
    ones = ridge.responses(model._replace(coef=jnp.ones((1, 12))), x)
    np.testing.assert_allclose(ones, 1.0, atol=1e-6)


def _design(model, x):
    """Dense B-spline design matrix (one column per coefficient), built column by column."""
    m, k = model.coef.shape
    cols = []
    for j in range(m):
        for i in range(k):
            e = jnp.zeros((m, k)).at[j, i].set(1.0)
            cols.append(ridge.responses(model._replace(coef=e), x)[:, j])
    return np.stack(cols, 1)


def test_fit_reaches_the_least_squares_optimum():
    key = jax.random.key(0)
    d, q = 4, 3000
    v = ridge.unit(jax.random.normal(key, (2, d)))
    x = jax.random.normal(jax.random.key(1), (q, d))
    y = jnp.sin(2 * x @ v[0]) + jnp.tanh(x @ v[1]) + 0.3 * x[:, 0] * x[:, 1]
    model = ridge.fit(ridge.init(v, knots=10, extent=4.5), x, y, steps=400, smoothing=0.0)
    # Reference: numpy least squares on the explicit design (splines + quadratic polynomial).
    iu = np.triu_indices(d)
    xn = np.asarray(x, np.float64)
    quad = (xn[:, :, None] * xn[:, None, :])[:, iu[0], iu[1]]
    poly = np.concatenate([np.ones((q, 1)), xn, quad], 1)
    a = np.concatenate([_design(model, x), poly], 1)
    coef, *_ = np.linalg.lstsq(a, np.asarray(y, np.float64), rcond=None)
    best = np.mean((a @ coef - np.asarray(y)) ** 2)
    got = float(jnp.mean((ridge.predict(model, x) - y) ** 2))
    assert got <= best * 1.02 + 1e-7, (got, best)


def test_fits_on_many_queries_run_in_chunks_with_the_same_result(monkeypatch):
    # Beyond CHUNK queries the loss, its gradient and the preconditioner are sums over chunks
    # (the last one padded and masked): the same numbers as in one piece, and the same fit.
    d, q = 4, 2500
    v = ridge.unit(jax.random.normal(jax.random.key(5), (3, d)))
    x = jax.random.normal(jax.random.key(6), (q, d))
    y = jnp.sin(2 * x @ v[0]) + jnp.tanh(x @ v[1]) + jax.nn.relu(x @ v[2]) + 0.1 * x[:, 0]
    start = ridge.init(ridge.unit(v + 0.1 * jax.random.normal(jax.random.key(7), v.shape)),
                       knots=12, extent=4.5)
    fit = ridge.fit.__wrapped__  # traced afresh below, so it reads CHUNK each time

    def outputs():
        loss, grad = jax.value_and_grad(ridge._loss)(start, x, y)
        return loss, grad, ridge._preconditioner(start, x), fit(start, x, y, directions=True,
                                                               steps=30)

    # Compiled whole, from a new function each time (jit would reuse the trace of the same
    # one), so each trace reads the CHUNK in force.
    whole = jax.jit(lambda: outputs())()
    monkeypatch.setattr(ridge, "CHUNK", 1000)  # three chunks, the last half padding
    chunked = jax.jit(lambda: outputs())()
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(chunked[1:3]), jax.tree.leaves(whole[1:3]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(chunked[3].directions, whole[3].directions, atol=1e-4)
    assert abs(float(ridge.relative_mse(chunked[3], x, y))
               - float(ridge.relative_mse(whole[3], x, y))) < 1e-6


def test_joint_refinement_sharpens_directions():
    d = 6
    v = ridge.unit(jax.random.normal(jax.random.key(2), (3, d)))
    x = jax.random.normal(jax.random.key(3), (20000, d))
    y = jnp.sin(1.5 * x @ v[0]) + jnp.tanh(2 * x @ v[1] + 0.3) + jax.nn.relu(x @ v[2] - 0.2)
    start = ridge.unit(v + 0.1 * jax.random.normal(jax.random.key(4), v.shape))
    model = ridge.fit(ridge.init(start, knots=16, extent=4.5), x, y)
    model = ridge.fit(model, x, y, directions=True)
    cos = np.abs(np.sum(np.asarray(model.directions) * np.asarray(v), 1))
    assert np.all(cos > 0.999), cos
    assert float(ridge.relative_mse(model, x, y)) < 1e-3


def test_quadratic_coef_gives_the_splines_of_quadratics():
    model = ridge.init(jnp.eye(3)[:1], knots=12, extent=3.0)
    abc = np.array([[0.5, 2.0, -0.3], [-1.0, 0.0, 0.8]])
    z = jnp.linspace(-2.99, 2.99, 201)
    got = ridge.spline(model._replace(coef=jnp.asarray(abc) @ ridge.quadratic_coef(model).T),
                       jnp.stack([z, z], 1))
    want = abc[:, :1] + abc[:, 1:2] * np.asarray(z) + abc[:, 2:] * np.asarray(z) ** 2
    np.testing.assert_allclose(got, want.T, atol=1e-4)


def test_canonical_moves_each_responses_quadratic_part_into_the_polynomial():
    # Random splines plus large quadratics along their own directions: the canonical form is the
    # same function, its responses are orthogonal to {1, z, z²} along their directions, and it
    # does not depend on how the quadratics were split between splines and polynomial.
    d, k = 5, 16
    v = ridge.unit(jax.random.normal(jax.random.key(5), (3, d)))
    x = jax.random.normal(jax.random.key(6), (4000, d))
    base = ridge.init(v, knots=k, extent=6.0)._replace(
        coef=jax.random.normal(jax.random.key(7), (3, k)), linear=jnp.linspace(-1, 1, d))
    abc = np.array([[0.5, 2.0, -0.3], [-1.0, -1.5, 0.8], [0.2, 3.0, 0.1]])
    shifted = base._replace(
        coef=base.coef + jnp.asarray(abc, jnp.float32) @ ridge.quadratic_coef(base).T)
    # shifted's splines hold the quadratics; moved_out holds them in its polynomial term.
    u = np.asarray(v)
    moved_out = shifted._replace(
        coef=base.coef, const=base.const + abc[:, 0].sum(),
        linear=base.linear + jnp.asarray(abc[:, 1] @ u, jnp.float32),
        quad=base.quad + jnp.asarray(np.einsum("m,mi,mj->ij", abc[:, 2], u, u), jnp.float32))
    np.testing.assert_allclose(ridge.predict(moved_out, x), ridge.predict(shifted, x), atol=1e-4)
    a, b = ridge.canonical(shifted, x), ridge.canonical(moved_out, x)
    for can in (a, b):
        np.testing.assert_allclose(ridge.predict(can, x), ridge.predict(shifted, x), atol=1e-4)
        z = np.asarray(x @ v.T, np.float64)
        r = np.asarray(ridge.responses(can, x), np.float64)
        for j in range(3):
            powers = np.stack([np.ones_like(z[:, j]), z[:, j], z[:, j] ** 2], 1)
            proj = np.linalg.lstsq(powers, r[:, j], rcond=None)[0]
            assert np.all(np.abs(proj) < 1e-4 * np.std(r[:, j]) + 1e-5), (j, proj)
        np.testing.assert_allclose(np.var(r, 0), ridge.nonpolynomial_share(shifted, x), rtol=1e-3)
    np.testing.assert_allclose(a.coef, b.coef, atol=1e-4)
    np.testing.assert_allclose(a.linear, b.linear, atol=1e-4)
    np.testing.assert_allclose(a.quad, b.quad, atol=1e-4)


def _one_ridge(response, d=5, q=50_000):
    v = ridge.unit(jax.random.normal(jax.random.key(0), (1, d)))
    x = jax.random.normal(jax.random.key(1), (q, d))
    model = ridge.fit(ridge.init(v), x, response(x @ v[0]), steps=300)
    return model, x


def test_angle_stderr_of_one_ridge_is_its_closed_form():
    """x ~ N(0, I), f = g(vᵀx): a tangent coordinate's column g'(z)·x_k (x_k ⊥ v, independent
    of z, mean 0) is orthogonal to every response and polynomial column but x_k and x_k·z, so
    net of them its information is Q·E[r²], r = g' minus its projection on {1, z}, and the RMS
    angle over d − 1 coordinates is σ·sqrt((d − 1)/(Q·E[r²]))."""
    a, d, q, sigma = 1.3, 5, 50_000, 0.05
    g = lambda z: a * jnp.tanh(1.5 * z + 0.3)  # noqa: E731
    model, x = _one_ridge(g, d, q)
    stderr = ridge.angle_stderr(model, ridge.information(model, x), sigma)
    z = np.random.default_rng(0).standard_normal(1_000_000)
    slope = np.asarray(jax.vmap(jax.grad(g))(jnp.asarray(z, jnp.float32)), np.float64)
    powers = np.stack([np.ones_like(z), z], 1)
    r = slope - powers @ np.linalg.lstsq(powers, slope, rcond=None)[0]
    np.testing.assert_allclose(stderr, sigma * np.sqrt((d - 1) / (q * np.mean(r**2))), rtol=0.02)
    # Information adds up over queries: a quarter of them doubles the standard error.
    quarter = ridge.angle_stderr(model, ridge.information(model, x[: q // 4]), sigma)
    np.testing.assert_allclose(quarter, 2 * stderr, rtol=0.05)


def test_angle_stderr_is_the_spread_of_converged_joint_fits():
    """The Cramér–Rao bound is what the least-squares fit attains: 24 joint fits (directions and
    responses) of four mixed ridges on one design with fresh noise each scatter their directions
    by the predicted RMS angle."""
    d, q, reps = 5, 8000, 24
    target = O.sample_target(jax.random.key(3), d, 4)
    x = jax.random.normal(jax.random.key(1), (q, d)).at[: q // 2].multiply(2.0)
    f = O.evaluate(target, x)
    sigma = 0.05 * float(jnp.std(f))
    truth = ridge.fit(ridge.init(target.directions), x, f, steps=300)
    stderr = ridge.angle_stderr(truth, ridge.information(truth, x), sigma)
    refit = jax.jit(lambda y: ridge.fit(truth, x, y, directions=True, steps=200))
    cos = np.stack([np.sum(np.asarray(refit(f + sigma * jax.random.normal(
        jax.random.key(100 + r), (q,))).directions) * np.asarray(target.directions), 1)
        for r in range(reps)])
    spread = np.sqrt(np.mean(np.arccos(np.clip(np.abs(cos), 0, 1)) ** 2, axis=0))
    # 24 × 4 tangent coordinates per direction: the RMS has ~7 % sampling error each, ~4 % pooled.
    assert np.all((spread / stderr > 0.75) & (spread / stderr < 1.35)), spread / stderr
    assert 0.88 < np.sqrt(np.mean(spread**2) / np.mean(stderr**2)) < 1.15


def test_angle_stderr_is_infinite_only_for_a_direction_the_polynomial_can_take_over():
    """A quadratic response's slope is linear in z, which the polynomial term fits as well: its
    direction is undetermined, and the tanh ridge beside it keeps its finite error."""
    d = 5
    v = ridge.unit(jax.random.normal(jax.random.key(0), (2, d)))
    x = jax.random.normal(jax.random.key(1), (20_000, d))
    z = x @ v.T
    model = ridge.fit(ridge.init(v), x, jnp.tanh(2 * z[:, 0]) + 0.5 * z[:, 1] ** 2, steps=300)
    stderr = ridge.angle_stderr(model, ridge.information(model, x), 0.01)
    assert np.isfinite(stderr[0]) and 0 < stderr[0] < 1e-3 and np.isinf(stderr[1])
    assert ridge.parameters(model) == ridge.jacobian(model, x[:1]).shape[1] == 119
    with pytest.raises(ValueError, match=r"x must have shape \(queries, 5\)"):
        ridge.information(model, x[:, :4])
    with pytest.raises(ValueError, match=r"not \(119, 119\) as information"):
        ridge.angle_stderr(model, np.eye(3), 0.01)
