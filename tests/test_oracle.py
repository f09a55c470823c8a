"""Targets and the oracle: closed-form responses, exact cluster geometry, counting, budget,
noise."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superjax import oracle as O


def test_evaluate_matches_closed_forms():
    d = 5
    v = np.eye(d)[:4]
    x = np.asarray(jax.random.normal(jax.random.key(0), (64, d)))
    z = x @ v.T
    cases = {
        "relu": (0.0, 0.3, np.maximum(z - 0.3, 0)),
        "tanh": (2.0, 0.1, np.tanh(2 * z + 0.1)),
        "sigmoid": (1.5, -0.2, 1 / (1 + np.exp(-(1.5 * z - 0.2)))),
        "sin": (1.7, 0.4, np.sin(1.7 * z + 0.4)),
        "bump": (0.8, 0.5, np.exp(-0.5 * ((z - 0.5) / 0.8) ** 2)),
        "abs": (0.0, -0.3, np.abs(z + 0.3)),
        "cubic": (0.0, 0.0, z**3 - 3 * z),
    }
    for name, (a, b, expect) in cases.items():
        t = O.Target(jnp.asarray(v), jnp.array([1.0, -0.5, 0.7, 1.2]),
                     jnp.full(4, O.RESPONSES.index(name)), jnp.full(4, a), jnp.full(4, b))
        np.testing.assert_allclose(O.evaluate(t, x), expect @ np.array([1.0, -0.5, 0.7, 1.2]),
                                   rtol=1e-5, atol=1e-5, err_msg=name)


def test_clustered_directions_have_the_exact_angle():
    v = np.asarray(O.clustered_directions(jax.random.key(1), 12, 10, 0.3))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    pair_cos = np.sum(v[0::2] * v[1::2], axis=1)
    np.testing.assert_allclose(np.arccos(pair_cos), 0.3, atol=1e-3)


def test_sample_target_families():
    t = O.sample_target(jax.random.key(2), 8, 20, degenerate=3)
    chex.assert_shape(t.directions, (23, 8))
    w = np.abs(np.asarray(t.weights))
    assert np.all((w >= 0.5) & (w <= 1.5))
    assert np.asarray(t.degenerate).sum() == 3
    kinds = {O.RESPONSES[k] for k in np.asarray(t.kinds)[:20]}
    assert kinds <= set(O.RESPONSE_MIXES["mixed"]) and len(kinds) >= 3
    O.validate_target(t)


def _target(v):
    n = len(v)
    return O.Target(jnp.asarray(v, jnp.float32), jnp.ones(n), jnp.zeros(n, jnp.int32),
                    jnp.ones(n), jnp.zeros(n))


def test_validate_target_rejects_bad_directions():
    with pytest.raises(ValueError, match="unit vectors"):
        O.validate_target(_target([[1.0, 0.0], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="duplicates up to sign"):
        O.validate_target(_target([[1.0, 0.0], [-1.0, 0.0]]))
    bad = _target([[1.0, 0.0], [0.0, 1.0]])._replace(weights=jnp.ones(3))
    with pytest.raises(ValueError, match="weights must have shape"):
        O.validate_target(bad)


def test_oracle_counts_and_enforces_the_budget():
    t = O.sample_target(jax.random.key(3), 6, 4)
    orc = O.Oracle.from_target(t, budget=100)
    x = jnp.ones((60, 6))
    np.testing.assert_allclose(orc(x), O.evaluate(t, x), rtol=1e-6)
    assert orc.queries == 60 and orc.remaining == 40
    with pytest.raises(O.QueryBudgetExceeded, match="budget"):
        orc(x)
    assert orc.queries == 60  # a refused batch costs nothing
    with pytest.raises(ValueError, match="dimension 5 but the oracle takes d = 6"):
        orc(jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        orc(jnp.full((3, 6), jnp.nan))


def test_oracle_noise_is_relative_to_std_f():
    t = O.sample_target(jax.random.key(4), 6, 8)
    orc = O.Oracle.from_target(t, noise=0.1, key=jax.random.key(5))
    x = jax.random.normal(jax.random.key(6), (20000, 6))
    err = orc(x) - O.evaluate(t, x)
    assert abs(float(jnp.std(err)) / (0.1 * orc.f_std) - 1) < 0.03
    assert abs(orc.f_std / float(jnp.std(O.evaluate(t, x))) - 1) < 0.05


def test_oracle_wraps_any_callable_and_checks_it():
    orc = O.Oracle.from_callable(lambda x: np.sin(np.asarray(x)).sum(1), 3)
    np.testing.assert_allclose(orc(np.ones((2, 3))), 3 * np.sin(1.0), rtol=1e-6)
    with pytest.raises(ValueError, match="must return shape"):
        O.Oracle.from_callable(lambda x: np.ones((len(x), 2)), 3)
    with pytest.raises(ValueError, match="NaN/Inf value.* on the 4096 probe points"):
        O.Oracle.from_callable(lambda x: np.log(np.asarray(x)[:, 0]), 3)
    # NaN only far out: the probe passes, and a later batch is named with its count.
    far = O.Oracle.from_callable(lambda x: np.where(np.abs(x[:, 0]) > 50, np.nan, x[:, 0]), 3)
    far(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"returned 1 NaN/Inf value\(s\) on query batch 1"):
        far(np.array([[0.0, 0, 0], [99.0, 0, 0]]))
    with pytest.raises(ValueError, match="failed on query points"):
        O.Oracle.from_callable(lambda x: np.asarray(x) @ np.ones(5), 3)
