"""Interpretability metrics: exact values on constructed cases, chance levels, sklearn agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from superjax import data, interpret


def _codes(key, s=2000, n=40, k=3):
    return data.sample_codes(key, data.DataConfig(m=n, n=n, k=k), s)


@pytest.mark.parametrize("window", [1, 4])
def test_intrusion_is_perfect_for_the_true_latents(window):
    z = _codes(jax.random.key(0))
    res = interpret.intrusion(jax.random.key(1), z, z, k=5, window=window)
    assert bool(res.valid.all()) and float(res.accuracy) == 1.0 and res.chance == 1 / 6


def test_intrusion_of_unrelated_units_is_at_chance():
    # Units independent of the judge: the k + 1 samples are exchangeable, so P(correct) = 1/(k+1).
    k_a, k_j, k_t = jax.random.split(jax.random.key(2), 3)
    acts = jax.random.normal(k_a, (3000, 600))
    judge = jax.random.normal(k_j, (3000, 10))
    res = interpret.intrusion(k_t, acts, judge, k=5)
    se = np.sqrt((1 / 6) * (5 / 6) / 600)
    assert abs(float(res.accuracy) - 1 / 6) < 4 * se


def test_dead_units_are_not_scored():
    z = _codes(jax.random.key(3))
    acts = z.at[:, 0].set(0.0)
    res = interpret.intrusion(jax.random.key(4), acts, z, k=5)
    assert not bool(res.valid[0]) and bool(res.valid[1:].all()) and float(res.accuracy) == 1.0
    none = interpret.intrusion(jax.random.key(4), jnp.zeros_like(z), z, k=5)
    assert np.isnan(float(none.accuracy))


def test_label_purity_matches_a_direct_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    acts = rng.normal(size=(500, 7))
    got = np.asarray(interpret.label_purity(acts, labels, 4, k=10))
    top = np.argsort(-acts, axis=0)[:10]
    want = [np.bincount(labels[top[:, j]], minlength=4).max() / 10 for j in range(7)]
    np.testing.assert_allclose(got, want)
    one_hot = np.eye(4)[labels]
    assert np.all(np.asarray(interpret.label_purity(one_hot, labels, 4, k=10)) == 1.0)


def test_feature_density():
    codes = jnp.array([[0.0, 1.0], [0.0, 0.0], [2.0, -1.0], [0.0, 0.5]])
    np.testing.assert_allclose(interpret.feature_density(codes), [0.25, 0.75])


def test_linear_r2_is_one_for_an_affine_image_and_agrees_with_sklearn():
    k_z, k_l, k_e = jax.random.split(jax.random.key(5), 3)
    z = _codes(k_z, 3000, 12, 3)
    y = z @ jax.random.normal(k_l, (12, 20)) + 3.0
    assert float(interpret.linear_r2(y[:2000], z[:2000], y[2000:], z[2000:])) > 1 - 1e-4
    y_noisy = np.asarray(y + 2.0 * jax.random.normal(k_e, y.shape), np.float64)
    z = np.asarray(z, np.float64)
    want = r2_score(z[2000:], LinearRegression().fit(y_noisy[:2000], z[:2000])
                    .predict(y_noisy[2000:]), multioutput="variance_weighted")
    got = float(interpret.linear_r2(y_noisy[:2000], z[:2000], y_noisy[2000:], z[2000:]))
    assert 0.3 < want < 0.95 and got == pytest.approx(want, abs=1e-4)


def test_linear_r2_ceiling_is_the_pca_share_and_is_attained():
    z = np.asarray(_codes(jax.random.key(6), 4000, 16, 3), np.float64)
    for m in (4, 8, 16):
        want = PCA().fit(z).explained_variance_ratio_[:m].sum()
        assert float(interpret.linear_r2_ceiling(z, m)) == pytest.approx(want, rel=1e-4)
    scores = PCA(8).fit(z).transform(z)  # the best 8-dimensional linear image of z
    assert float(interpret.linear_r2(scores, z, scores, z)) == pytest.approx(
        float(interpret.linear_r2_ceiling(z, 8)), abs=1e-4)


def test_additivity_of_linear_and_of_nonlinear_representations():
    k_a, k_b, k_l = jax.random.split(jax.random.key(7), 3)
    za, zb = _codes(k_a, 200, 10, 2), _codes(k_b, 200, 10, 2)
    lin = jax.random.normal(k_l, (10, 6))

    def rep(z):
        return z @ lin + 1.0

    add = interpret.additivity(rep(jnp.zeros((1, 10)))[0], rep(za), rep(zb), rep(za + zb))
    assert float(add.cos) == pytest.approx(1.0, abs=1e-5) and float(add.residual) < 1e-5
    d_ab, d_sum = (za + zb) @ lin, za @ lin + zb @ lin
    other = jnp.roll(d_sum, 1, axis=0)
    want = float(np.mean(np.sum(d_ab * other, 1) / np.linalg.norm(d_ab, axis=1)
                         / np.linalg.norm(other, axis=1)))
    assert float(add.null_cos) == pytest.approx(want, abs=1e-5) and float(add.null_cos) < 0.9
    sq = interpret.additivity(jnp.zeros(6), rep(za) ** 2, rep(zb) ** 2, rep(za + zb) ** 2)
    assert float(sq.residual) > 0.05


def test_bad_input_is_one_clear_error():
    z = jnp.ones((10, 3))
    with pytest.raises(ValueError, match="judge samples"):
        interpret.intrusion(jax.random.key(0), z, jnp.ones((9, 3)))
    with pytest.raises(ValueError, match="k must be"):
        interpret.intrusion(jax.random.key(0), z, z, k=20)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        interpret.additivity(jnp.zeros(3), z[:1], z[:1], z[:1])
    with pytest.raises(ValueError, match="NaN"):
        interpret.linear_r2(z.at[0, 0].set(jnp.nan), z, z, z)
