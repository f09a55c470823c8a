"""Metrics: invariances (permutation, sign, scale), chance levels, closed forms, references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from superjax import data, metrics


def _codes(seed, n=16, samples=2000, k=3):
    return data.sample_codes(jax.random.key(seed), data.DataConfig(m=8, n=n, k=k), samples)


def test_permuted_sign_flipped_rescaled_copy_scores_one():
    z = _codes(0)
    perm = jax.random.permutation(jax.random.key(1), 16)
    signs = jnp.where(jnp.arange(16) % 3 == 0, -1.0, 1.0)
    z_hat = z[:, perm] * signs * jnp.linspace(0.1, 7.0, 16)
    assert float(metrics.latent_mcc(z, z_hat)) == pytest.approx(1.0, abs=1e-5)
    a = data.gaussian_dictionary(jax.random.key(2), 8, 16)
    scores = metrics.dictionary_metrics(a, a[:, perm] * signs * 3.0)
    for v in scores:
        assert float(v) == pytest.approx(1.0, abs=1e-6)


def test_seed_agreement_closed_form():
    # Two restarts that found the same atoms (permuted, sign-flipped, rescaled) agree fully.
    a = data.gaussian_dictionary(jax.random.key(2), 8, 16)
    perm = jax.random.permutation(jax.random.key(1), 16)
    assert float(metrics.seed_agreement([a, -2.0 * a[:, perm]])) == pytest.approx(1.0, abs=1e-6)
    # I and the rotation by θ: |cos| = [[c, s], [s, c]], best matching max(c, s); the third
    # pair (I, rotation by 2θ) gives max(|cos 2θ|, |sin 2θ|). Agreement is the mean over pairs.
    t = 0.3
    rot = lambda u: jnp.array([[np.cos(u), -np.sin(u)], [np.sin(u), np.cos(u)]])  # noqa: E731
    want = np.mean([max(np.cos(t), np.sin(t)), max(np.cos(t), np.sin(t)),
                    max(abs(np.cos(2 * t)), abs(np.sin(2 * t)))])
    got = metrics.seed_agreement([jnp.eye(2), rot(t), rot(2 * t)])
    assert float(got) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        metrics.seed_agreement([a])


def test_reproducible_rate_counts_atoms_matched_above_the_threshold():
    # I, and rotations by t and 2t with cos t = 0.995 ≥ 0.99 > cos 2t = 0.98005: both atoms match
    # at |cos t| in the pairs (I, R_t) and (R_t, R_2t), at |cos 2t| in (I, R_2t). Rate 2/3.
    t = np.arccos(0.995)
    rot = lambda u: jnp.array([[np.cos(u), -np.sin(u)], [np.sin(u), np.cos(u)]])  # noqa: E731
    dicts = [jnp.eye(2), rot(t), rot(2 * t)]
    assert float(metrics.reproducible_rate(dicts)) == pytest.approx(2 / 3)
    assert float(metrics.reproducible_rate(dicts, threshold=0.98)) == pytest.approx(1.0)
    a = data.gaussian_dictionary(jax.random.key(2), 8, 16)
    assert float(metrics.reproducible_rate([a, -a[:, ::-1]])) == 1.0
    with pytest.raises(ValueError, match="at least two"):
        metrics.reproducible_rate([a])
    with pytest.raises(ValueError, match="one shape"):
        metrics.reproducible_rate([a, a[:, :12]])


def test_shared_rate_is_the_fraction_of_atoms_found_in_the_other_dictionaries():
    # Against R_t every atom of I matches at cos t = 0.995; against R_2t at 0.98005. Mean over
    # the two pairs at 0.99: (1 + 0) / 2. Atoms may come in any order and sign, and the two sides
    # may differ in width: 12 of a's 16 atoms sit in its 12-atom slice, whose atoms all do.
    t = np.arccos(0.995)
    rot = lambda u: jnp.array([[np.cos(u), -np.sin(u)], [np.sin(u), np.cos(u)]])  # noqa: E731
    assert float(metrics.shared_rate([jnp.eye(2)], [rot(t), rot(2 * t)], 0.99)) == 0.5
    assert float(metrics.shared_rate([jnp.eye(2)], [rot(t), rot(2 * t)], 0.98)) == 1.0
    a = data.gaussian_dictionary(jax.random.key(2), 8, 16)
    assert float(metrics.shared_rate([a], [-a[:, ::-1][:, :12]])) == pytest.approx(0.75)
    assert float(metrics.shared_rate([a[:, 4:]], [a])) == 1.0
    with pytest.raises(ValueError, match="each side"):
        metrics.shared_rate([a], [])
    with pytest.raises(ValueError, match="row count"):
        metrics.shared_rate([a], [a[:4]])


def test_independent_codes_score_near_chance():
    z, other = _codes(3), _codes(4)
    chance = float(metrics.latent_mcc_chance(jax.random.key(5), z, other))
    score = float(metrics.latent_mcc(z, other))
    assert score < 0.1 and abs(score - chance) < 0.02
    # The chance level of a perfect copy is still low: it measures the metric, not the codes.
    assert float(metrics.latent_mcc_chance(jax.random.key(5), z, z)) < 0.1


def test_extra_and_missing_latents():
    z = _codes(6)
    padded = jnp.concatenate([z, jnp.zeros((2000, 4))], axis=1)  # four dead latents
    assert float(metrics.latent_mcc(z, padded)) == pytest.approx(1.0, abs=1e-5)
    # Only 8 of 16 latents inferred: the 8 unmatched true latents count 0.
    assert float(metrics.latent_mcc(z, z[:, :8])) == pytest.approx(0.5, abs=1e-5)


def test_constant_column_has_zero_correlation():
    x = jnp.stack([jnp.linspace(0, 1, 50), jnp.full(50, 0.3)], axis=1)
    r = metrics.abs_correlation(x, x)
    np.testing.assert_allclose(np.asarray(r), [[1, 0], [0, 0]], atol=1e-6)


def test_hungarian_matching_agrees_with_scipy():
    score = jax.random.uniform(jax.random.key(7), (12, 15))
    ours = float(jnp.sum(metrics.matched_scores(score)))
    rows, cols = linear_sum_assignment(np.asarray(score), maximize=True)
    assert ours == pytest.approx(float(np.asarray(score)[rows, cols].sum()), rel=1e-6)
    # Both sides of the one matching: each matched row's and column's score, 0 where unmatched
    # (three of the 15 columns).
    by_row, by_col = (np.asarray(v) for v in metrics.matched_both(score))
    expect_col = np.zeros(15, np.float32)
    expect_col[cols] = np.asarray(score)[rows, cols]
    np.testing.assert_allclose(by_row, np.asarray(score)[rows, cols], rtol=1e-6)
    np.testing.assert_allclose(by_col, expect_col, rtol=1e-6)
    assert (by_col == 0).sum() == 3


def test_random_dictionary_chance_level_is_high_in_low_dimension():
    true8 = data.gaussian_dictionary(jax.random.key(8), 8, 128)
    true64 = data.gaussian_dictionary(jax.random.key(8), 64, 128)
    low = metrics.random_dictionary_metrics(jax.random.key(9), true8)
    high = metrics.random_dictionary_metrics(jax.random.key(9), true64)
    assert float(low.mmcs) > 0.7 and float(high.mmcs) < 0.5  # best-of-128 in R^8 is far above 0
    assert float(low.mean_cos) <= float(low.mmcs)
    assert float(high.recovery_rate_095) == 0.0


def test_recovery_rates_at_thresholds():
    true = data.gaussian_dictionary(jax.random.key(10), 32, 10)
    noise = data.gaussian_dictionary(jax.random.key(11), 32, 10)
    # Rotate each atom towards a random direction to an exact cosine.
    ortho = noise - true * jnp.sum(noise * true, 0)
    ortho = ortho / jnp.linalg.norm(ortho, axis=0)
    cosines = jnp.array([0.999, 0.999, 0.97, 0.97, 0.97, 0.5, 0.5, 0.5, 0.5, 0.5])
    learned = cosines * true + jnp.sqrt(1 - cosines**2) * ortho
    m = metrics.dictionary_metrics(true, learned)
    assert float(m.recovery_rate_099) == pytest.approx(0.2)
    assert float(m.recovery_rate_095) == pytest.approx(0.5)


def test_fvu_l0_dead_shrinkage_closed_forms():
    y = jax.random.normal(jax.random.key(12), (100, 5))
    assert float(metrics.fvu(y, y)) == 0.0
    assert float(metrics.fvu(y, jnp.broadcast_to(y.mean(0), y.shape))) == pytest.approx(1.0)
    z = jnp.array([[0.0, 2.0, 0.05], [0.0, -1.0, 3.0]])
    assert float(metrics.l0(z)) == 2.0 and float(metrics.l0(z, 0.1)) == 1.5
    assert float(metrics.dead_fraction(z)) == pytest.approx(1 / 3)
    assert float(metrics.shrinkage(y, 0.5 * y)) == pytest.approx(0.5)


def test_splice_scores_closed_forms_and_scipy_reference():
    """The reconstruction y itself recovers all of the loss, the mean none of it; in between the
    cross-entropies and the KL agree with scipy's log-softmax."""
    from scipy.special import log_softmax

    k_y, k_w, k_l, k_n = jax.random.split(jax.random.key(14), 4)
    y = jax.nn.relu(jax.random.normal(k_y, (300, 6)))
    w = jax.random.normal(k_w, (6, 4))
    logits = y @ w
    labels = jnp.argmax(logits + 0.5 * jax.random.gumbel(k_l, logits.shape), -1)
    mean = y.mean(0)

    def head(a):
        return a @ w

    exact = metrics.splice_scores(head, y, y, mean, labels)
    assert float(exact.ce_loss_recovered) == pytest.approx(1.0)
    assert float(exact.spliced_kl) == pytest.approx(0.0, abs=1e-6)
    assert float(exact.spliced_accuracy) == float(exact.clean_accuracy) > 0.5
    ablated = metrics.splice_scores(head, y, jnp.broadcast_to(mean, y.shape), mean, labels)
    assert float(ablated.ce_loss_recovered) == pytest.approx(0.0, abs=1e-6)

    y_hat = y + 0.3 * jax.random.normal(k_n, y.shape)
    got = metrics.splice_scores(head, y, y_hat, mean, labels)
    lab = np.asarray(labels)

    def ce(a):
        return -np.mean(log_softmax(np.asarray(a, np.float64) @ np.asarray(w, np.float64),
                                    axis=-1)[np.arange(len(lab)), lab])

    c, s, a = ce(y), ce(y_hat), ce(np.broadcast_to(mean, y.shape))
    assert float(got.clean_ce) == pytest.approx(c, rel=1e-5)
    assert float(got.spliced_ce) == pytest.approx(s, rel=1e-5)
    assert float(got.ablated_ce) == pytest.approx(a, rel=1e-5)
    assert float(got.ce_loss_recovered) == pytest.approx((a - s) / (a - c), rel=1e-4)
    p = log_softmax(np.asarray(y @ w, np.float64), axis=-1)
    q = log_softmax(np.asarray(y_hat @ w, np.float64), axis=-1)
    assert float(got.spliced_kl) == pytest.approx(np.mean(np.sum(np.exp(p) * (p - q), -1)),
                                                  rel=1e-4)
    with pytest.raises(ValueError, match="baseline length"):
        metrics.splice_scores(head, y, y_hat, mean[:5], labels)
    with pytest.raises(ValueError, match="labels must be integers"):
        metrics.splice_scores(head, y, y_hat, mean, labels.astype(jnp.float32))
    assert float(metrics.cross_entropy(y_hat @ w, labels)) == pytest.approx(s, rel=1e-5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        metrics.cross_entropy(logits, labels + 4)


def test_bad_input():
    z = _codes(13)
    with pytest.raises(ValueError, match="samples"):
        metrics.latent_mcc(z, z[:10])
    with pytest.raises(ValueError, match="NaN or Inf"):
        metrics.latent_mcc(z.at[0, 0].set(jnp.inf), z)
    with pytest.raises(ValueError, match="learned rows"):
        metrics.dictionary_metrics(jnp.ones((8, 4)), jnp.ones((7, 4)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.fvu(jnp.ones((4, 3)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="2 dimensions"):
        metrics.l0(jnp.ones(3))
