"""Sparse-autoencoder losses: pure functions returning (scalar loss, LossAux).

* ReLU + L1: mean ‖x − x̂‖² + λ·mean Σ_j |z_j|·‖W_dec[j]‖ (the decoder-norm weighting makes the
  penalty invariant to moving scale between encoder and decoder; Conerly et al. 2024).
* TopK / BatchTopK: mean ‖x − x̂‖² (sparsity is structural).
* JumpReLU: mean ‖x − x̂‖² + λ·mean Σ_j H(pre_j − θ_j), the L0 penalty, differentiated in θ by the
  straight-through estimator of :func:`superjax.models.heaviside_ste`.

``sae_loss(model, x, lam)`` dispatches on the model's activation and is what a train step calls.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from superjax.models import SAEOutput, SparseAutoencoder, heaviside_ste


class LossAux(NamedTuple):
    """Per-batch diagnostics returned with every loss."""

    mse: Float[Array, ""]  # mean squared reconstruction error per sample (summed over d_in)
    sparsity: Float[Array, ""]  # the penalised sparsity term (weighted L1, or L0), before λ
    l0: Float[Array, ""]  # mean number of non-zero codes per sample
    fvu: Float[Array, ""]  # fraction of variance unexplained on this batch
    density: Float[Array, " n"]  # fraction of the batch on which each latent fired


def _density(out: SAEOutput) -> Array:
    return jnp.mean(out.codes != 0, axis=0).astype(out.codes.dtype)


def _reconstruction(x, out: SAEOutput) -> tuple[Array, Array]:
    err = jnp.sum((x - out.reconstruction) ** 2, axis=-1)
    var = jnp.sum((x - x.mean(0)) ** 2)
    return jnp.mean(err), jnp.sum(err) / jnp.maximum(var, jnp.finfo(x.dtype).tiny)


def l1_sae_loss(
    x: Float[Array, "b d"], out: SAEOutput, w_dec: Float[Array, "n d"], lam: float
) -> tuple[Array, LossAux]:
    """mean ‖x − x̂‖² + λ · mean Σ_j |z_j| ‖W_dec[j]‖."""
    mse, fvu = _reconstruction(x, out)
    norms = jnp.linalg.norm(w_dec, axis=1)
    sparsity = jnp.mean(jnp.sum(jnp.abs(out.codes) * norms, axis=-1))
    l0 = jnp.mean(jnp.sum(out.codes != 0, axis=-1))
    return mse + lam * sparsity, LossAux(mse, sparsity, l0, fvu, _density(out))


def mse_loss(x: Float[Array, "b d"], out: SAEOutput) -> tuple[Array, LossAux]:
    """mean ‖x − x̂‖² (TopK and BatchTopK: sparsity is enforced by the activation)."""
    mse, fvu = _reconstruction(x, out)
    l0 = jnp.mean(jnp.sum(out.codes != 0, axis=-1))
    return mse, LossAux(mse, l0, l0, fvu, _density(out))


def jumprelu_loss(
    x: Float[Array, "b d"], out: SAEOutput, threshold: Float[Array, " n"], bandwidth: float,
    lam: float,
) -> tuple[Array, LossAux]:
    """mean ‖x − x̂‖² + λ · mean Σ_j H(pre_j − θ_j), with straight-through gradients for θ."""
    mse, fvu = _reconstruction(x, out)
    l0_ste = jnp.mean(jnp.sum(heaviside_ste(out.pre_activations.astype(jnp.float32),
                                            threshold.astype(jnp.float32), bandwidth), axis=-1))
    return mse + lam * l0_ste, LossAux(mse, l0_ste, l0_ste, fvu, _density(out))


def sae_loss(model: SparseAutoencoder, x: Float[Array, "b d"], lam: float = 0.0
             ) -> tuple[Array, LossAux]:
    """The training loss of ``model`` on batch ``x`` (λ is ignored by TopK / BatchTopK)."""
    out = model(x)
    kind = model.config.activation
    if kind == "relu":
        return l1_sae_loss(x, out, model.W_dec[...], lam)
    if kind == "jumprelu":
        return jumprelu_loss(x, out, model.threshold[...], model.config.jumprelu_bandwidth, lam)
    return mse_loss(x, out)
