"""Recovery metrics, exactly as defined in sparse-recovery.md §4, each with its chance level.

* Latent MCC: |Pearson r| between every true and every inferred latent over a test set (a constant
  column gets r = 0), optimal one-to-one matching (Hungarian, maximising), mean matched |r| over
  the TRUE latents (unmatched true latents count 0).
* Dictionary recovery: |cos| between true and learned atoms; Hungarian-matched mean |cos|, MMCS
  (mean over true atoms of the best |cos|), recovery rate at |cos| ≥ 0.95 and ≥ 0.99.
* Chance levels: the same metric for a random dictionary of the learned shape, and for inferred
  codes whose samples are shuffled (breaking the pairing, keeping every marginal).
* Seed agreement: the matched mean |cos| between dictionaries learned from different
  initialisations (no ground truth needed; it selects λ, see :func:`seed_agreement`), and the
  fraction of atoms that restarts reproduce at |cos| ≥ 0.99 (:func:`reproducible_rate`), and the
  fraction found again in dictionaries trained another way (:func:`shared_rate`).
* FVU, L0 at a threshold, dead fraction, shrinkage.
* Downstream: the cross-entropy of a network with a layer replaced by the SAE's reconstruction,
  and the share of the ablation's loss that the reconstruction recovers (:func:`splice_scores`).

All functions are pure and jit-able; the Hungarian matching is optax's jittable implementation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from superjax import _checks
from superjax.data import gaussian_dictionary

REPRODUCED_COS = 0.99  # |cos| at which a restart counts as reproducing an atom


def _rows(name: str, a, ndim: int = 2) -> Array:
    return _checks.float_array(name, a, ndims=(ndim,))


def _pair(y, y_hat) -> tuple[Array, Array]:
    """A layer and its reconstruction, checked to be rows of one shape."""
    y, y_hat = _rows("y", y), _rows("y_hat", y_hat)
    if y.shape != y_hat.shape:
        raise ValueError(f"y and y_hat must have the same shape, got {y.shape} and {y_hat.shape}")
    return y, y_hat


def abs_correlation(a: Float[Array, "s p"], b: Float[Array, "s q"]) -> Float[Array, "p q"]:
    """|Pearson r| between the columns of a and of b (samples along axis 0); constant → 0."""

    def standardise(x):
        xc = x - x.mean(0)
        spread = jnp.linalg.norm(xc, axis=0)
        # Constant up to rounding: spread below float resolution of the column's own scale.
        scale = jnp.sqrt(x.shape[0]) * jnp.max(jnp.abs(x), axis=0)
        live = spread > 16 * jnp.finfo(x.dtype).eps * scale
        return jnp.where(live, xc / jnp.where(live, spread, 1.0), 0.0)

    return jnp.clip(jnp.abs(standardise(a).T @ standardise(b)), 0.0, 1.0)


def abs_cosine(a: Float[Array, "m p"], b: Float[Array, "m q"]) -> Float[Array, "p q"]:
    """|cos| between the columns of a and the columns of b (zero columns → 0)."""
    na = jnp.linalg.norm(a, axis=0)
    nb = jnp.linalg.norm(b, axis=0)
    c = (a / jnp.where(na > 0, na, 1.0)).T @ (b / jnp.where(nb > 0, nb, 1.0))
    return jnp.clip(jnp.abs(c), 0.0, 1.0)


@jax.jit  # optax's matching is a scan: eagerly it would recompile on every call
def matched_both(score: Float[Array, "p q"]) -> tuple[Float[Array, " p"], Float[Array, " q"]]:
    """For each row and for each column, its score under the maximum-weight one-to-one matching
    (0 if unmatched): both sides of one matching."""
    rows, cols = optax.assignment.hungarian_algorithm(-score)
    matched = score[rows, cols]
    return (jnp.zeros(score.shape[0], score.dtype).at[rows].set(matched),
            jnp.zeros(score.shape[1], score.dtype).at[cols].set(matched))


@jax.jit
def matched_scores(score: Float[Array, "p q"]) -> Float[Array, " p"]:
    """For each row, its score under the maximum-weight one-to-one matching (0 if unmatched)."""
    return matched_both(score)[0]


def latent_mcc(z_true: Float[Array, "s n"], z_hat: Float[Array, "s q"]) -> Float[Array, ""]:
    """Mean Hungarian-matched |Pearson r| over the true latents."""
    z_true, z_hat = _rows("z_true", z_true), _rows("z_hat", z_hat)
    _checks.same_size("z_true samples", z_true.shape[0], "z_hat samples", z_hat.shape[0])
    return jnp.mean(matched_scores(abs_correlation(z_true, z_hat)))


def latent_mcc_chance(
    key: PRNGKeyArray, z_true: Float[Array, "s n"], z_hat: Float[Array, "s q"], trials: int = 8
) -> Float[Array, ""]:
    """Chance level of :func:`latent_mcc`: the MCC after shuffling the samples of ``z_hat``.

    Shuffling keeps every latent's distribution but breaks its pairing with the true codes, so
    this is what an unrelated encoder with the same statistics would score at this sample size.
    """
    z_true, z_hat = _rows("z_true", z_true), _rows("z_hat", z_hat)
    _checks.positive_int("trials", trials)
    perms = jax.vmap(lambda k: jax.random.permutation(k, z_hat.shape[0]))(
        jax.random.split(key, trials))
    return jnp.mean(jax.vmap(lambda p: latent_mcc(z_true, z_hat[p]))(perms))


class DictionaryMetrics(NamedTuple):
    """Dictionary recovery scores (true atoms as reference)."""

    mean_cos: Float[Array, ""]  # Hungarian-matched mean |cos|
    mmcs: Float[Array, ""]  # mean over true atoms of the best |cos|
    recovery_rate_095: Float[Array, ""]  # fraction of true atoms with best |cos| >= 0.95
    recovery_rate_099: Float[Array, ""]  # ... >= 0.99


def dictionary_metrics(
    true: Float[Array, "m n"], learned: Float[Array, "m q"]
) -> DictionaryMetrics:
    """Scores a learned dictionary (atoms as columns) against the true one; sign/scale-invariant."""
    true, learned = _rows("true", true), _rows("learned", learned)
    _checks.same_size("learned rows", learned.shape[0], "true rows (M)", true.shape[0])
    cos = abs_cosine(true, learned)
    best = cos.max(axis=1)
    return DictionaryMetrics(
        mean_cos=jnp.mean(matched_scores(cos)),
        mmcs=jnp.mean(best),
        recovery_rate_095=jnp.mean(best >= 0.95),
        recovery_rate_099=jnp.mean(best >= 0.99),
    )


def restart_matches(dictionaries: Sequence[Float[Array, "m q"]]) -> Float[Array, "pairs q"]:
    """Per pair of dictionaries (e.g. restarts of one SAE), each atom's Hungarian-matched |cos|
    in the other: what :func:`seed_agreement` and :func:`reproducible_rate` summarise."""
    if len(dictionaries) < 2:
        raise ValueError(f"seed agreement needs at least two dictionaries, got {len(dictionaries)}")
    dictionaries = [_rows(f"dictionary {i}", d) for i, d in enumerate(dictionaries)]
    shapes = {d.shape for d in dictionaries}
    if len(shapes) > 1:
        raise ValueError(f"the dictionaries must share one shape (rows, atoms): {sorted(shapes)}")
    return jnp.stack([matched_scores(abs_cosine(a, b))
                      for a, b in itertools.combinations(dictionaries, 2)])


def seed_agreement(dictionaries: Sequence[Float[Array, "m q"]]) -> Float[Array, ""]:
    """Mean over pairs of the Hungarian-matched mean |cos| between learned dictionaries (atoms as
    columns), e.g. SAEs trained from different initialisations on the same data.

    Needs no ground truth, so it can choose a sparsity coefficient on real activations: when the
    data pin the dictionary down, independent restarts find the same atoms (agreement near 1);
    too weak a penalty leaves a dense, non-identifiable code and too strong a one leaves atoms
    dead at their random initialisation, and the restarts disagree.
    """
    return jnp.mean(restart_matches(dictionaries))


def reproducible_rate(dictionaries: Sequence[Float[Array, "m q"]],
                      threshold: float = REPRODUCED_COS) -> Float[Array, ""]:
    """The restarts' analogue of the recovery rate: the fraction of atoms whose Hungarian match
    in another restart's dictionary has |cos| ≥ ``threshold``, averaged over pairs.

    :func:`seed_agreement` averages the matched |cos|, so many roughly reproduced atoms can
    outweigh a few exactly reproduced ones; this counts only the exact ones, and tracks the
    fraction of true atoms recovered (docs/results.md, dictionary recovery: TopK's k).
    """
    return jnp.mean(restart_matches(dictionaries) >= threshold)


def shared_rate(first: Sequence[Float[Array, "m p"]], second: Sequence[Float[Array, "m q"]],
                threshold: float = 0.95) -> Float[Array, ""]:
    """The fraction of the atoms of ``first``'s dictionaries whose Hungarian match in one of
    ``second``'s has |cos| ≥ ``threshold``, averaged over every (first, second) pair.

    With the restarts of two neighbouring values of a sweep (k and the next k) it says whether a
    value's atoms belong to the data or to that value: TopK's k = 1 vector quantiser has cluster
    centres that restarts reproduce but that no k ≥ 2 finds (docs/results.md, dictionary recovery).
    """
    first = [_rows(f"first dictionary {i}", d) for i, d in enumerate(first)]
    second = [_rows(f"second dictionary {i}", d) for i, d in enumerate(second)]
    if not first or not second:
        raise ValueError("shared_rate needs at least one dictionary on each side")
    rows = {d.shape[0] for d in first + second}
    if len(rows) > 1:
        raise ValueError(f"the dictionaries must share one row count (M): {sorted(rows)}")
    return jnp.mean(jnp.stack([jnp.mean(matched_scores(abs_cosine(a, b)) >= threshold)
                               for a in first for b in second]))


def random_dictionary_metrics(
    key: PRNGKeyArray, true: Float[Array, "m n"], n_learned: int | None = None, trials: int = 8
) -> DictionaryMetrics:
    """Chance level: :func:`dictionary_metrics` of random Gaussian unit atoms (mean over trials)."""
    true = _rows("true", true)
    m, n = true.shape
    n_learned = n if n_learned is None else _checks.positive_int("n_learned", n_learned)
    _checks.positive_int("trials", trials)
    scores = jax.vmap(lambda k: dictionary_metrics(true, gaussian_dictionary(k, m, n_learned)))(
        jax.random.split(key, trials))
    return jax.tree.map(jnp.mean, scores)


def fvu(y: Float[Array, "s m"], y_hat: Float[Array, "s m"]) -> Float[Array, ""]:
    """Fraction of variance unexplained Σ‖y − ŷ‖² / Σ‖y − ȳ‖² (explained variance = 1 − FVU)."""
    y, y_hat = _pair(y, y_hat)
    return jnp.sum((y - y_hat) ** 2) / jnp.sum((y - y.mean(0)) ** 2)


def l0(z: Float[Array, "s q"], threshold: float = 0.0) -> Float[Array, ""]:
    """Mean number of latents with |z_j| > threshold per sample."""
    return jnp.mean(jnp.sum(jnp.abs(_rows("z", z)) > threshold, axis=-1))


def dead_fraction(z: Float[Array, "s q"], threshold: float = 0.0) -> Float[Array, ""]:
    """Fraction of latents never above ``threshold`` in magnitude over the given samples."""
    return jnp.mean(~jnp.any(jnp.abs(_rows("z", z)) > threshold, axis=0))


def shrinkage(y: Float[Array, "s m"], y_hat: Float[Array, "s m"]) -> Float[Array, ""]:
    """Mean ‖ŷ‖/‖y‖ (below 1: the reconstruction is shrunk, e.g. by an L1 penalty)."""
    y, y_hat = _pair(y, y_hat)
    ny = jnp.linalg.norm(y, axis=-1)
    return jnp.mean(jnp.linalg.norm(y_hat, axis=-1) / jnp.where(ny > 0, ny, 1.0))


def cross_entropy(logits: Float[Array, "s c"], labels) -> Array:
    """Mean cross-entropy of integer ``labels`` under softmax(``logits``), in nats."""
    logits = _rows("logits", logits)
    return _cross_entropy(logits, _checks.int_labels(labels, logits.shape[0], logits.shape[1]))


def _cross_entropy(logits, labels) -> Array:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


class SpliceScores(NamedTuple):
    """A layer's reconstruction spliced into the network it came from (:func:`splice_scores`)."""

    clean_ce: Array        # the network's own cross-entropy
    spliced_ce: Array      # with the layer replaced by the reconstruction
    ablated_ce: Array      # with the layer replaced by its mean (the baseline)
    ce_loss_recovered: Array  # (ablated − spliced) / (ablated − clean): 1 = no loss, 0 = ablation
    clean_accuracy: Array
    spliced_accuracy: Array
    spliced_kl: Array      # mean KL(clean ‖ spliced) of the predicted class distributions


def splice_scores(head: Callable[[Array], Array], y: Float[Array, "s m"],
                  y_hat: Float[Array, "s m"], baseline: Float[Array, " m"], labels
                  ) -> SpliceScores:
    """How much of the network's function survives when the layer y is replaced by ŷ.

    ``head`` maps the layer to logits (the rest of the network). The baseline is mean ablation:
    every row replaced by ``baseline`` (the layer's training mean), the usual floor of the
    "CE loss recovered" score of SAE evaluations; a reconstruction that recovers less than 0
    hurts the network more than forgetting the layer, more than 1 lowers its loss.
    """
    y, y_hat = _pair(y, y_hat)
    baseline = _rows("baseline", baseline, ndim=1)
    _checks.same_size("baseline length", baseline.shape[0], "layer width", y.shape[1])
    clean, spliced = head(y), head(y_hat)
    ablated = head(jnp.broadcast_to(baseline, y.shape))
    labels = _checks.int_labels(labels, y.shape[0], clean.shape[-1])  # checked once for all three

    def ce(logits):
        return _cross_entropy(logits, labels)

    def accuracy(logits):
        return jnp.mean(jnp.argmax(logits, -1) == labels)

    log_p, log_q = jax.nn.log_softmax(clean), jax.nn.log_softmax(spliced)
    kl = jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))
    c, s, a = ce(clean), ce(spliced), ce(ablated)
    return SpliceScores(c, s, a, (a - s) / (a - c), accuracy(clean), accuracy(spliced), kl)
