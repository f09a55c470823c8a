"""Sparse autoencoders as Flax NNX modules (sparse-recovery.md §3).

    pre = (x − b_dec) W_enc + b_enc,   z = σ(pre),   x̂ = z W_dec + b_dec

Parameter names and layouts follow SAELens (W_enc: d_in × d_sae, W_dec: d_sae × d_in, b_enc, b_dec,
threshold), so weights move between ecosystems without renaming. The rows of W_dec are the atoms
(the columns of the dictionary A = W_decᵀ used everywhere else in superjax) and are kept at unit
norm. Activations σ:

* ``relu``: ReLU, trained with an L1 penalty weighted by the decoder row norms.
* ``topk``: keep the k largest pre-activations per sample (ReLU'd) (Gao et al. 2024).
* ``batchtopk``: keep the k·B largest over the whole batch (Bussmann et al. 2024).
* ``jumprelu``: z = pre · H(pre − θ) with a learned per-latent threshold θ, held in float32, and a
  straight-through (rectangle-kernel) gradient for θ (Rajamanoharan et al. 2024).

Model code knows nothing about training: forward returns an :class:`SAEOutput`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from superjax import _checks

ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Shape and activation of a sparse autoencoder.

    Attributes:
      d_in: input (activation) dimension M.
      d_sae: number of latents N.
      activation: one of ``ACTIVATIONS``.
      k: active latents per sample for ``topk`` / ``batchtopk`` (average for the latter).
      jumprelu_init_threshold: initial θ for ``jumprelu``.
      jumprelu_bandwidth: width ε of the rectangle kernel in the straight-through estimator.
    """

    d_in: int
    d_sae: int
    activation: str = "relu"
    k: int = 0
    jumprelu_init_threshold: float = 1e-3
    jumprelu_bandwidth: float = 1e-3

    def __post_init__(self):
        _checks.positive_int("d_in", self.d_in)
        _checks.positive_int("d_sae", self.d_sae)
        _checks.one_of("activation", self.activation, ACTIVATIONS)
        if self.activation in ("topk", "batchtopk"):
            _checks.positive_int("k", self.k, maximum=self.d_sae)
        _checks.real_number("jumprelu_init_threshold", self.jumprelu_init_threshold, minimum=0.0)
        _checks.real_number("jumprelu_bandwidth", self.jumprelu_bandwidth, minimum=0.0,
                            strict_min=True)


class SAEOutput(NamedTuple):
    """Everything a loss or a metric needs from one forward pass."""

    reconstruction: Float[Array, "b d_in"]
    codes: Float[Array, "b d_sae"]
    pre_activations: Float[Array, "b d_sae"]


def heaviside_ste(x: Array, threshold: Array, bandwidth: float) -> Array:
    """H(x − θ), with the straight-through pseudo-derivative of Rajamanoharan et al. (2024).

    Forward: 1[x > θ]. Backward: ∂/∂θ = −K((x − θ)/ε)/ε with the rectangle kernel
    K(u) = 1[|u| < ½]; no gradient flows to x (H is piecewise constant in x). Written with
    ``stop_gradient`` instead of a custom VJP, so it composes with shard_map's varying-axis typing.
    """
    step = jax.lax.stop_gradient((x > threshold).astype(x.dtype))
    kernel = jax.lax.stop_gradient(
        (jnp.abs(x - threshold) < bandwidth / 2).astype(x.dtype) / bandwidth)
    return step + (jax.lax.stop_gradient(threshold) - threshold) * kernel


def jumprelu(x: Array, threshold: Array, bandwidth: float) -> Array:
    """JumpReLU(x) = x · H(x − θ); θ receives straight-through gradients through H."""
    return x * heaviside_ste(x, threshold, bandwidth)


def topk_mask(pre: Float[Array, "b n"], k: int) -> Float[Array, "b n"]:
    """1 for the k largest entries of each row (ties broken by index), else 0."""
    _, idx = jax.lax.top_k(pre, k)
    return jnp.zeros_like(pre).at[jnp.arange(pre.shape[0])[:, None], idx].set(1.0)


def batch_topk_mask(pre: Float[Array, "b n"], k: int) -> Float[Array, "b n"]:
    """1 for the k·B largest entries of the whole batch (variable count per sample)."""
    flat = pre.reshape(-1)
    _, idx = jax.lax.top_k(flat, k * pre.shape[0])
    return jnp.zeros_like(flat).at[idx].set(1.0).reshape(pre.shape)


class SparseAutoencoder(nnx.Module):
    """One-layer encoder, linear decoder with unit-norm atoms (see module docstring)."""

    def __init__(self, config: SAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        w_dec = jax.random.normal(rngs.params(), (config.d_sae, config.d_in))
        w_dec = w_dec / jnp.linalg.norm(w_dec, axis=1, keepdims=True)
        self.W_dec = nnx.Param(w_dec)
        # Encoder starts as the decoder transpose (Conerly et al. 2024; Gao et al. 2024).
        self.W_enc = nnx.Param(w_dec.T)
        self.b_enc = nnx.Param(jnp.zeros((config.d_sae,)))
        self.b_dec = nnx.Param(jnp.zeros((config.d_in,)))
        if config.activation == "jumprelu":
            self.threshold = nnx.Param(
                jnp.full((config.d_sae,), config.jumprelu_init_threshold, jnp.float32))

    @property
    def dictionary(self) -> Float[Array, "d_in d_sae"]:
        """The learned dictionary A = W_decᵀ (atoms as columns), as in superjax.data."""
        return self.W_dec[...].T

    def encode_pre(self, x: Float[Array, "b d_in"]) -> Float[Array, "b d_sae"]:
        return (x - self.b_dec[...]) @ self.W_enc[...] + self.b_enc[...]

    def activate(self, pre: Float[Array, "b d_sae"]) -> Float[Array, "b d_sae"]:
        cfg = self.config
        if cfg.activation == "relu":
            return jax.nn.relu(pre)
        if cfg.activation == "topk":
            return jax.nn.relu(pre) * topk_mask(pre, cfg.k)
        if cfg.activation == "batchtopk":
            return jax.nn.relu(pre) * batch_topk_mask(pre, cfg.k)
        threshold = self.threshold[...].astype(jnp.float32)
        return jumprelu(pre.astype(jnp.float32), threshold, cfg.jumprelu_bandwidth
                        ).astype(pre.dtype)

    def decode(self, codes: Float[Array, "b d_sae"]) -> Float[Array, "b d_in"]:
        return codes @ self.W_dec[...] + self.b_dec[...]

    def __call__(self, x: Float[Array, "b d_in"]) -> SAEOutput:
        if x.ndim != 2 or x.shape[-1] != self.config.d_in:
            raise ValueError(f"SAE input must have shape (batch, {self.config.d_in}), "
                             f"got {tuple(x.shape)}")
        pre = self.encode_pre(x)
        codes = self.activate(pre)
        return SAEOutput(self.decode(codes), codes, pre)


def normalize_decoder(model: SparseAutoencoder) -> None:
    """Rescales every decoder row (atom) to unit norm, in place."""
    w = model.W_dec[...]
    model.W_dec[...] = w / jnp.maximum(jnp.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def remove_parallel_gradient(w_dec: Float[Array, "n d"], grad: Float[Array, "n d"]) -> Array:
    """Drops the component of each row's gradient along the (unit) row itself.

    With unit-norm atoms the parallel component only changes norms, which the renormalisation
    undoes; removing it keeps the optimiser's moment estimates meaningful (Bricken et al. 2023).
    """
    return grad - jnp.sum(grad * w_dec, axis=1, keepdims=True) * w_dec
