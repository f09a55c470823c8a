"""Synthetic data: exact sparsity, frequencies, geometry, reproducibility, validation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superjax import data


def test_gaussian_atoms_are_unit_norm():
    a = data.gaussian_dictionary(jax.random.key(0), 16, 64)
    chex.assert_shape(a, (16, 64))
    chex.assert_trees_all_close(jnp.linalg.norm(a, axis=0), jnp.ones(64), atol=1e-6)


def test_clustered_atoms_sit_at_the_requested_angle():
    cfg = data.DataConfig(m=32, n=40, k=3, dictionary="clustered", n_clusters=5, cluster_angle=0.2)
    a = data.make_dictionary(jax.random.key(1), cfg)
    chex.assert_trees_all_close(jnp.linalg.norm(a, axis=0), jnp.ones(40), atol=1e-6)
    # Atoms j and j + n_clusters share a centre: cos ≈ cos²(angle), far above random pairs.
    same = jnp.abs(jnp.sum(a[:, :35] * a[:, 5:], axis=0))
    assert float(same.min()) > np.cos(0.2) ** 2 - 0.05
    gaussian = data.gaussian_dictionary(jax.random.key(1), 32, 40)
    random_pairs = jnp.abs(jnp.sum(gaussian[:, :35] * gaussian[:, 5:], axis=0))
    assert float(jnp.mean(same)) > 3 * float(jnp.mean(random_pairs))


@pytest.mark.parametrize("signed", [True, False])
def test_exact_support_has_exactly_k_and_uniform_frequencies(signed):
    cfg = data.DataConfig(m=8, n=20, k=4, signed=signed)
    z = data.sample_codes(jax.random.key(2), cfg, 20_000)
    assert np.all(np.asarray(jnp.sum(z != 0, axis=1)) == 4)
    freq = np.asarray(jnp.mean(z != 0, axis=0))
    np.testing.assert_allclose(freq, 4 / 20, atol=0.015)  # 5 binomial standard errors ≈ 0.014
    assert bool(jnp.any(z < 0)) == signed
    # Amplitudes: |N(0,1)| has mean √(2/π); N(0,1) has mean 0 and unit variance.
    active = np.asarray(z[z != 0])
    if signed:
        assert abs(active.mean()) < 0.02 and abs(active.var() - 1) < 0.03
    else:
        assert abs(active.mean() - np.sqrt(2 / np.pi)) < 0.02


def test_zipf_frequencies_follow_the_weights():
    cfg = data.DataConfig(m=8, n=30, k=3, frequencies="zipf", zipf_exponent=1.2)
    z = data.sample_codes(jax.random.key(3), cfg, 20_000)
    freq = np.asarray(jnp.mean(z != 0, axis=0))
    assert np.all(np.asarray(jnp.sum(z != 0, axis=1)) == 3)
    assert freq[0] > freq[5] > freq[29]
    assert np.all(np.diff(freq[::5]) < 0)


@pytest.mark.parametrize("frequencies", ["uniform", "zipf"])
def test_traced_k_draws_exactly_the_top_k_support(frequencies):
    # One compiled program for every K (the phase-transition sweep) must not change any draw.
    key = jax.random.key(7)
    draw = jax.jit(lambda k: data.sample_codes(key, data.DataConfig(m=8, n=40, k=1,
                                                                    frequencies=frequencies),
                                               64, k=k))
    for k in (1, 5, 40):
        want = data.sample_codes(key, data.DataConfig(m=8, n=40, k=k, frequencies=frequencies), 64)
        np.testing.assert_array_equal(np.asarray(draw(k)), np.asarray(want))
    assert draw._cache_size() == 1


def test_bernoulli_support_has_k_on_average_with_capped_probabilities():
    cfg = data.DataConfig(m=8, n=30, k=6, support="bernoulli", frequencies="zipf",
                          zipf_exponent=2.0)
    p = data.feature_probabilities(cfg)
    assert float(p.sum()) == pytest.approx(6.0, rel=1e-5)
    assert float(p.max()) <= 1.0 and float(p[0]) == 1.0  # the heaviest feature is capped
    z = data.sample_codes(jax.random.key(4), cfg, 20_000)
    counts = np.asarray(jnp.sum(z != 0, axis=1))
    assert abs(counts.mean() - 6.0) < 0.05 and counts.std() > 0.5
    np.testing.assert_allclose(np.asarray(jnp.mean(z != 0, axis=0)), p, atol=0.015)


def test_batch_is_a_linear_mix_with_optional_noise():
    cfg = data.DataConfig(m=8, n=16, k=3)
    a = data.make_dictionary(jax.random.key(5), cfg)
    b = data.sample_batch(jax.random.key(6), a, cfg, 100)
    chex.assert_trees_all_close(b.y, b.z @ a.T, atol=1e-6)
    noisy = data.DataConfig(m=8, n=16, k=3, noise_std=0.1)
    nb = data.sample_batch(jax.random.key(6), a, noisy, 20_000)
    assert float(jnp.std(nb.y - nb.z @ a.T)) == pytest.approx(0.1, rel=0.02)


def test_batch_at_is_reproducible_per_step_and_jits():
    cfg = data.DataConfig(m=8, n=16, k=3)
    key = jax.random.key(7)
    a = data.make_dictionary(key, cfg)
    stream = jax.jit(functools.partial(data.batch_at, config=cfg, batch_size=32))
    first, again, other = stream(key, 3, a), stream(key, 3, a), stream(key, 4, a)
    chex.assert_trees_all_equal(first, again)
    assert not bool(jnp.allclose(first.z, other.z))
    # Eager and compiled programs may round the decoding matmul differently (XLA promises no
    # bitwise agreement between them): the same batch to float32 rounding.
    chex.assert_trees_all_close(first, data.batch_at(key, 3, a, cfg, 32), rtol=1e-6, atol=1e-6)
    # vmap over steps gives the same batches as one call per step.
    many = jax.vmap(lambda s: data.batch_at(key, s, a, cfg, 32))(jnp.arange(3, 5))
    chex.assert_trees_all_close(many.z[0], first.z)
    # A jitted loop that closes over the dictionary (its value checks run on the constant).
    looped = jax.jit(lambda: jax.lax.fori_loop(
        3, 5, lambda s, acc: acc + data.batch_at(key, s, a, cfg, 32).z, jnp.zeros((32, 16))))()
    chex.assert_trees_all_close(looped, first.z + other.z, atol=1e-6)
    bad = a.at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="1 NaN or Inf"):
        jax.jit(lambda: data.batch_at(key, 0, bad, cfg, 32))()


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"m": 8, "n": 16, "k": 17}, ValueError, "k must be <= n"),
    ({"m": 0, "n": 16, "k": 3}, ValueError, "m must be >= 1"),
    ({"m": 8, "n": 16, "k": 0}, ValueError, "k must be >= 1"),
    ({"m": 8, "n": 16, "k": 3, "support": "poisson"}, ValueError, "support must be one of"),
    ({"m": 8, "n": 16, "k": 3, "frequencies": "pareto"}, ValueError, "frequencies must be one"),
    ({"m": 8, "n": 16, "k": 3, "noise_std": -1.0}, ValueError, "noise_std must lie in"),
    ({"m": 8, "n": 16, "k": 3, "noise_std": float("nan")}, ValueError, "noise_std must be finite"),
    ({"m": 8, "n": 16, "k": 3, "dictionary": "clustered", "n_clusters": 17}, ValueError,
     "n_clusters must be >= 1 and <= 16"),
    ({"m": 8, "n": 16, "k": 3, "n_clusters": 0}, ValueError, "n_clusters must be >= 1"),
    ({"m": 8.5, "n": 16, "k": 3}, TypeError, "m must be an integer"),
])
def test_config_validation(kwargs, err, match):
    with pytest.raises(err, match=match):
        data.DataConfig(**kwargs)


def test_a_gaussian_dictionary_may_have_fewer_atoms_than_the_default_cluster_count():
    # n_clusters (default 8) shapes clustered dictionaries only: N = 4 < 8 atoms is a valid
    # undercomplete Gaussian problem, drawn with unit atoms and exactly K active per code.
    cfg = data.DataConfig(m=8, n=4, k=2)
    a = data.make_dictionary(jax.random.key(0), cfg)
    np.testing.assert_allclose(jnp.linalg.norm(a, axis=0), 1.0, rtol=1e-6)
    batch = data.sample_batch(jax.random.key(1), a, cfg, 64)
    assert batch.y.shape == (64, 8) and np.all(np.sum(np.asarray(batch.z) != 0, 1) == 2)


def test_sample_batch_rejects_mismatched_dictionary():
    cfg = data.DataConfig(m=8, n=16, k=3)
    with pytest.raises(ValueError, match="dictionary rows"):
        data.sample_batch(jax.random.key(0), jnp.ones((9, 16)), cfg, 4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        data.sample_batch(jax.random.key(0), jnp.full((8, 16), jnp.nan), cfg, 4)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        data.sample_codes(jax.random.key(0), cfg, 0)
