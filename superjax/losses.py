"""Sparse-autoencoder losses: pure functions returning (scalar loss, LossAux).

* ReLU + L1: mean ‖x − x̂‖² + λ·mean Σ_j |z_j|·‖W_dec[j]‖ (the decoder-norm weighting makes the
  penalty invariant to moving scale between encoder and decoder; Conerly et al. 2024).
* TopK / BatchTopK: mean ‖x − x̂‖² (sparsity is structural).
* JumpReLU: mean ‖x − x̂‖² + λ·mean Σ_j H(pre_j − θ_j), the L0 penalty, differentiated in θ by the
  straight-through estimator of :func:`superjax.models.heaviside_ste`.

Any of them can add the AuxK loss against dead latents (Gao et al. 2024): the k_aux largest
pre-activations among latents marked dead reconstruct the main reconstruction error e = x − x̂
through their atoms, L_aux = ‖e − ê‖² / ‖e − ē‖², so dead latents get a gradient towards the
directions the live ones miss.

``sae_loss(model, x, lam, ...)`` dispatches on the model's activation and is what a train step
calls.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from superjax.models import SAEOutput, SparseAutoencoder, batch_sum, broadcast_rows, heaviside_ste


class LossAux(NamedTuple):
    """Per-batch diagnostics returned with every loss."""

    mse: Float[Array, ""]  # mean squared reconstruction error per sample (summed over d_in)
    sparsity: Float[Array, ""]  # the penalised sparsity term (weighted L1, or L0), before λ
    l0: Float[Array, ""]  # mean number of non-zero codes per sample
    fvu: Float[Array, ""]  # fraction of variance unexplained on this batch
    density: Float[Array, " n"]  # fraction of the batch on which each latent fired
    auxk: Float[Array, ""] | float = 0.0  # the AuxK loss L_aux (0 when it is off)


def _density(out: SAEOutput) -> Array:
    return batch_sum((out.codes != 0).astype(out.codes.dtype)) / out.codes.shape[0]


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
    # Batch means per latent first: one column reduction of the (b, n) codes serves the penalty
    # and its gradient in the norms, and L0 is the sum of the densities (no second mask pass).
    sparsity = batch_sum(jnp.abs(out.codes)) @ norms / out.codes.shape[0]
    density = _density(out)
    return mse + lam * sparsity, LossAux(mse, sparsity, jnp.sum(density), fvu, density)


def mse_loss(x: Float[Array, "b d"], out: SAEOutput) -> tuple[Array, LossAux]:
    """mean ‖x − x̂‖² (TopK and BatchTopK: sparsity is enforced by the activation)."""
    mse, fvu = _reconstruction(x, out)
    density = _density(out)
    l0 = jnp.sum(density)
    return mse, LossAux(mse, l0, l0, fvu, density)


def jumprelu_loss(
    x: Float[Array, "b d"], out: SAEOutput, threshold: Float[Array, " n"], bandwidth: float,
    lam: float,
) -> tuple[Array, LossAux]:
    """mean ‖x − x̂‖² + λ · mean Σ_j H(pre_j − θ_j), with straight-through gradients for θ."""
    mse, fvu = _reconstruction(x, out)
    pre = out.pre_activations.astype(jnp.float32)
    threshold = broadcast_rows(threshold.astype(jnp.float32), pre.shape[0])
    l0_ste = jnp.mean(jnp.sum(heaviside_ste(pre, threshold, bandwidth), axis=-1))
    return mse + lam * l0_ste, LossAux(mse, l0_ste, l0_ste, fvu, _density(out))


def auxk_loss(
    x: Float[Array, "b d"], out: SAEOutput, w_dec: Float[Array, "n d"], dead: Bool[Array, " n"],
    k_aux: int,
) -> Float[Array, ""]:
    """‖e − ê‖² / ‖e − ē‖² with e = x − x̂ (no gradient) and ê from the top-k_aux dead latents.

    Zero when no latent is dead. ê = ReLU(top-k_aux of the dead pre-activations) @ W_dec, without
    the decoder bias (e is a residual).
    """
    e = jax.lax.stop_gradient(x - out.reconstruction)
    pre = jnp.where(dead, out.pre_activations, -jnp.inf)
    vals, idx = jax.lax.top_k(pre, min(k_aux, pre.shape[-1]))
    vals = jnp.where(jnp.isfinite(vals), jax.nn.relu(vals), 0.0)
    codes = jnp.zeros_like(out.pre_activations).at[
        jnp.arange(pre.shape[0])[:, None], idx].set(vals)
    e_hat = codes @ w_dec
    var = jnp.sum((e - e.mean(0)) ** 2)
    loss = jnp.sum((e - e_hat) ** 2) / jnp.maximum(var, jnp.finfo(x.dtype).tiny)
    return jnp.where(jnp.any(dead), loss, 0.0)


def sae_loss(model: SparseAutoencoder, x: Float[Array, "b d"], lam: float = 0.0, *,
             dead: Bool[Array, " n"] | None = None, k_aux: int = 0, aux_coef: float = 1 / 32,
             k: Array | None = None) -> tuple[Array, LossAux]:
    """The training loss of ``model`` on batch ``x`` (λ is ignored by TopK / BatchTopK, whose
    number of active latents ``k``, traced, may replace ``model.config.k``; see
    :meth:`superjax.models.SparseAutoencoder.__call__`).

    With ``dead`` (a mask of dead latents) and ``k_aux`` > 0, adds ``aux_coef`` × AuxK loss.
    """
    out = model(x, k)
    kind = model.config.activation
    if kind == "relu":
        loss, aux = l1_sae_loss(x, out, model.W_dec[...], lam)
    elif kind == "jumprelu":
        loss, aux = jumprelu_loss(x, out, model.threshold[...], model.config.jumprelu_bandwidth,
                                  lam)
    else:
        loss, aux = mse_loss(x, out)
    if dead is not None and k_aux > 0:
        extra = auxk_loss(x, out, model.W_dec[...], dead, k_aux)
        loss, aux = loss + aux_coef * extra, aux._replace(auxk=extra)
    return loss, aux
