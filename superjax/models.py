"""Sparse autoencoders as Flax NNX modules (sparse-recovery.md §3).

    pre = (x − b_dec) W_enc + b_enc,   z = σ(pre),   x̂ = z W_dec + b_dec

Parameter names and layouts follow SAELens (W_enc: d_in × d_sae, W_dec: d_sae × d_in, b_enc, b_dec,
threshold), so weights move between ecosystems without renaming. The rows of W_dec are the atoms
(the columns of the dictionary A = W_decᵀ used everywhere else in superjax) and are kept at unit
norm. Activations σ:

* ``relu``: ReLU, trained with an L1 penalty weighted by the decoder row norms.
* ``topk``: keep the k largest pre-activations per sample (ReLU'd) (Gao et al. 2024).
* ``batchtopk``: keep the k·B largest over the whole batch (Bussmann et al. 2024). Under data
  parallelism (shard_map) the batch is the per-device shard, so the selection is per shard.
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
K_ACTIVATIONS = ("topk", "batchtopk")  # a number k of active latents, not a penalty λ
ENCODERS = ("linear", "mlp", "lista", "fista")
TOPK_KERNELS = ("auto", "dense", "gather")


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
      encoder: "linear" (one layer), "mlp" (the one-layer map plus a correction through one hidden
        ReLU layer of width ``hidden``, zero at initialisation, so training starts from the
        one-layer encoder at W_decᵀ like the others instead of from an unrelated random map) or
        "lista" (``lista_steps`` unrolled ISTA steps through the decoder, learned per-step
        matrices and biases; Gregor & LeCun 2010).
        "fista" is no learned encoder at all: the codes are ``fista_steps`` non-negative FISTA
        iterations on ½‖x̃ − z W_dec‖² + ``fista_lam``·‖z‖₁ through the current decoder, with no
        gradient through them, so training learns the dictionary alone: classical (online)
        dictionary learning in the SAE harness.
      hidden: MLP hidden width (default 4·d_in).
      lista_steps: number of unrolled steps T for "lista".
      fista_steps, fista_lam: FISTA iterations and L1 weight of the "fista" encoder.
      topk_kernel: how a one-layer TopK SAE computes what follows the selection. "dense" masks
        the full pre-activations and decodes with a batch × d_sae × d_in matmul. "gather"
        recomputes only the k selected pre-activations from gathered encoder columns and decodes
        from k gathered atoms, so the backward pass is two scatter-adds of B·k rows instead of
        three dense matmuls (same function and gradients up to float rounding; faster where
        matmuls are slow relative to memory, e.g. on CPU). The dense encoder product is still
        formed once, to select. "auto" (default) is "gather" for a one-layer TopK SAE on the
        CPU backend, where it measured 1.1–1.7× the dense step (benchmarks/bench_sae.py), and
        "dense" elsewhere (:attr:`gather_kernel`).
    """

    d_in: int
    d_sae: int
    activation: str = "relu"
    k: int = 0
    jumprelu_init_threshold: float = 1e-3
    jumprelu_bandwidth: float = 1e-3
    encoder: str = "linear"
    hidden: int = 0
    lista_steps: int = 3
    fista_steps: int = 100
    fista_lam: float = 0.05
    topk_kernel: str = "auto"

    def __post_init__(self):
        _checks.positive_int("d_in", self.d_in)
        _checks.positive_int("d_sae", self.d_sae)
        _checks.one_of("activation", self.activation, ACTIVATIONS)
        if self.activation in K_ACTIVATIONS:
            _checks.positive_int("k", self.k, maximum=self.d_sae)
        _checks.real_number("jumprelu_init_threshold", self.jumprelu_init_threshold, minimum=0.0)
        _checks.real_number("jumprelu_bandwidth", self.jumprelu_bandwidth, minimum=0.0,
                            strict_min=True)
        _checks.one_of("encoder", self.encoder, ENCODERS)
        _checks.positive_int("hidden", self.hidden, minimum=0)
        _checks.positive_int("lista_steps", self.lista_steps)
        _checks.positive_int("fista_steps", self.fista_steps)
        _checks.real_number("fista_lam", self.fista_lam, minimum=0.0)
        _checks.one_of("topk_kernel", self.topk_kernel, TOPK_KERNELS)
        if self.topk_kernel == "gather" and (self.activation, self.encoder) != ("topk", "linear"):
            raise ValueError("topk_kernel 'gather' is for one-layer TopK SAEs (activation 'topk', "
                             f"encoder 'linear'); got {self.activation!r}, {self.encoder!r}")
        if self.encoder == "fista" and self.activation != "relu":
            raise ValueError("the fista encoder gives non-negative L1 codes; use activation "
                             f"'relu', got {self.activation!r}")

    @property
    def gather_kernel(self) -> bool:
        """Whether the forward pass runs the gather kernel (``topk_kernel``; "auto" resolves
        with the default backend when the model is traced)."""
        if self.topk_kernel == "auto":
            return ((self.activation, self.encoder) == ("topk", "linear")
                    and jax.default_backend() == "cpu")
        return self.topk_kernel == "gather"

    @property
    def hidden_width(self) -> int:
        return self.hidden or 4 * self.d_in

    def encoder_flops(self) -> int:
        """Multiply-adds ×2 of one forward pass of the encoder (per sample)."""
        d, n = self.d_in, self.d_sae
        if self.encoder == "mlp":
            return 2 * d * n + 2 * d * self.hidden_width + 2 * self.hidden_width * n
        if self.encoder == "lista":
            return 2 * d * n + self.lista_steps * 4 * d * n
        if self.encoder == "fista":
            return self.fista_steps * 4 * d * n
        return 2 * d * n


class SAEOutput(NamedTuple):
    """Everything a loss or a metric needs from one forward pass."""

    reconstruction: Float[Array, "b d_in"]
    codes: Float[Array, "b d_sae"]
    pre_activations: Float[Array, "b d_sae"]


def batch_sum(x: Float[Array, "b ..."]) -> Array:
    """Σ over the leading (batch) axis, as a vector–matrix product with a ones vector.

    The same sum as ``x.sum(0)`` to float rounding, but XLA:CPU (jax 0.10) reduces over a
    leading axis ~30× slower than it multiplies by a vector: 0.40 s against 0.014 s for a
    4096 × 24576 array. Full float32 precision (no TF32 or bf16 passes on accelerators).
    """
    return jnp.tensordot(jnp.ones(x.shape[0], x.dtype), x, axes=1,
                         precision=jax.lax.Precision.HIGHEST)


def broadcast_rows(v: Float[Array, " n"], rows: int) -> Float[Array, "rows n"]:
    """``v`` repeated as ``rows`` rows, written as a rank-one product so that its gradient is
    :func:`batch_sum` of the incoming gradient (a matvec) rather than a leading-axis reduction.
    XLA fuses the forward into its consumer like any broadcast."""
    return jnp.matmul(jnp.ones((rows, 1), v.dtype), v[None, :],
                      precision=jax.lax.Precision.HIGHEST)


def add_bias(y: Float[Array, "b n"], bias: Float[Array, " n"]) -> Float[Array, "b n"]:
    """y + bias, with the bias gradient as a matvec (see :func:`broadcast_rows`)."""
    return y + broadcast_rows(bias, y.shape[0])


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


def _first(count: int, active: Array | None, dtype) -> Array | float:
    """1 for the first ``active`` of ``count`` selected entries (all when ``active`` is None)."""
    return 1.0 if active is None else (jnp.arange(count) < active).astype(dtype)


def topk_mask(pre: Float[Array, "b n"], k: int, active: Array | None = None
              ) -> Float[Array, "b n"]:
    """1 for the k largest entries of each row (ties broken by index), else 0.

    ``active`` (traced, ≤ k) keeps only the ``active`` largest: the same mask as
    ``topk_mask(pre, active)`` with ``k`` as the static bound, so SAEs of different k share one
    compiled step.
    """
    _, idx = jax.lax.top_k(pre, k)
    return jnp.zeros_like(pre).at[jnp.arange(pre.shape[0])[:, None], idx].set(
        _first(k, active, pre.dtype))


def batch_topk_mask(pre: Float[Array, "b n"], k: int, active: Array | None = None
                    ) -> Float[Array, "b n"]:
    """1 for the k·B largest entries of the whole batch (variable count per sample); ``active``
    as in :func:`topk_mask`."""
    flat = pre.reshape(-1)
    _, idx = jax.lax.top_k(flat, k * pre.shape[0])
    on = None if active is None else active * pre.shape[0]
    return jnp.zeros_like(flat).at[idx].set(_first(k * pre.shape[0], on, pre.dtype)
                                            ).reshape(pre.shape)


class SparseAutoencoder(nnx.Module):
    """One-layer encoder, linear decoder with unit-norm atoms (see module docstring)."""

    def __init__(self, config: SAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        w_dec = jax.random.normal(rngs.params(), (config.d_sae, config.d_in))
        w_dec = w_dec / jnp.linalg.norm(w_dec, axis=1, keepdims=True)
        self.W_dec = nnx.Param(w_dec)
        if config.encoder in ("linear", "mlp", "lista"):
            # Encoder starts as the decoder transpose (Conerly et al. 2024; Gao et al. 2024).
            self.W_enc = nnx.Param(w_dec.T)
        self.b_enc = nnx.Param(jnp.zeros((config.d_sae,)))
        self.b_dec = nnx.Param(jnp.zeros((config.d_in,)))
        if config.encoder == "mlp":
            h = config.hidden_width
            self.W_hidden = nnx.Param(
                jax.random.normal(rngs.params(), (config.d_in, h)) / jnp.sqrt(config.d_in))
            self.b_hidden = nnx.Param(jnp.zeros((h,)))
            self.W_out = nnx.Param(jnp.zeros((h, config.d_sae)))
        if config.encoder == "lista":
            # Step t: z ← σ(z + (x̃ − z W_dec) S_t + c_t); S_t starts as ½·W_decᵀ (an ISTA step).
            self.S = nnx.Param(
                jnp.broadcast_to(0.5 * w_dec.T, (config.lista_steps,) + w_dec.T.shape))
            self.c = nnx.Param(jnp.zeros((config.lista_steps, config.d_sae)))
        if config.activation == "jumprelu":
            self.threshold = nnx.Param(
                jnp.full((config.d_sae,), config.jumprelu_init_threshold, jnp.float32))

    @property
    def dictionary(self) -> Float[Array, "d_in d_sae"]:
        """The learned dictionary A = W_decᵀ (atoms as columns), as in superjax.data."""
        return self.W_dec[...].T

    def encode_pre(self, x: Float[Array, "b d_in"], k: Array | None = None
                   ) -> Float[Array, "b d_sae"]:
        """Pre-activations; for LISTA the last unrolled step's (see SAEConfig.encoder), whose
        steps activate with ``k`` (see :meth:`__call__`)."""
        centred = add_bias(x, -self.b_dec[...])
        if self.config.encoder == "fista":
            from superjax import sparse_coding

            w_dec = jax.lax.stop_gradient(self.W_dec[...])
            return sparse_coding.fista_fixed(
                w_dec.T, jax.lax.stop_gradient(centred), self.config.fista_lam,
                self.config.fista_steps, nonneg=True).codes
        if self.config.encoder == "mlp":
            h = jax.nn.relu(add_bias(centred @ self.W_hidden[...], self.b_hidden[...]))
            return add_bias(centred @ self.W_enc[...] + h @ self.W_out[...], self.b_enc[...])
        # (x − b_dec) W_enc written as x W_enc − b_dec W_enc: the same function, but its gradient
        # for b_dec is a vector–matrix product instead of a batch × d_sae × d_in matmul (the
        # input x needs no gradient), which saves one of the step's six large matmuls.
        w_enc = self.W_enc[...]
        pre = add_bias(x @ w_enc, self.b_enc[...] - self.b_dec[...] @ w_enc)
        if self.config.encoder == "lista":
            w_dec = self.W_dec[...]
            for t in range(self.config.lista_steps):
                z = self.activate(pre, k)
                pre = add_bias(z + (centred - z @ w_dec) @ self.S[t], self.c[t])
        return pre

    def activate(self, pre: Float[Array, "b d_sae"], k: Array | None = None
                 ) -> Float[Array, "b d_sae"]:
        cfg = self.config
        if cfg.activation == "relu":
            return jax.nn.relu(pre)
        if cfg.activation == "topk":
            return jax.nn.relu(pre) * topk_mask(pre, cfg.k, k)
        if cfg.activation == "batchtopk":
            return jax.nn.relu(pre) * batch_topk_mask(pre, cfg.k, k)
        threshold = broadcast_rows(self.threshold[...].astype(jnp.float32), pre.shape[0])
        return jumprelu(pre.astype(jnp.float32), threshold, cfg.jumprelu_bandwidth
                        ).astype(pre.dtype)

    def decode(self, codes: Float[Array, "b d_sae"]) -> Float[Array, "b d_in"]:
        return add_bias(codes @ self.W_dec[...], self.b_dec[...])

    def __call__(self, x: Float[Array, "b d_in"], k: Array | None = None) -> SAEOutput:
        """Reconstruction, codes and pre-activations of ``x``.

        ``k``: for TopK and BatchTopK, the number of active latents as a traced integer
        ≤ ``config.k`` (the static bound); the function equals that of a model with
        ``config.k = k``, so a k sweep is one compiled, vmapped step. None: ``config.k``.
        """
        if x.ndim != 2 or x.shape[-1] != self.config.d_in:
            raise ValueError(f"SAE input must have shape (batch, {self.config.d_in}), "
                             f"got {tuple(x.shape)}")
        pre = self.encode_pre(x, k)
        if self.config.gather_kernel:
            return self._topk_gather(x, pre, k)
        codes = self.activate(pre, k)
        return SAEOutput(self.decode(codes), codes, pre)

    def _topk_gather(self, x, pre, k: Array | None = None) -> SAEOutput:
        """TopK on k gathered latents (SAEConfig.topk_kernel "gather").

        ``pre`` only selects (no gradient); the k chosen pre-activations are recomputed from the
        gathered encoder columns, so gradients reach W_enc and W_dec as B·k-row scatter-adds.
        Returned pre-activations stay differentiable for losses that read them (AuxK).
        """
        w_enc, w_dec, b_dec = self.W_enc[...], self.W_dec[...], self.b_dec[...]
        _, idx = jax.lax.top_k(jax.lax.stop_gradient(pre), self.config.k)     # (b, k)
        bias = self.b_enc[...] - b_dec @ w_enc
        pre_k = jnp.einsum("bd,bkd->bk", x, jnp.take(w_enc.T, idx, axis=0)) + bias[idx]
        z_k = jax.nn.relu(pre_k) * _first(self.config.k, k, pre_k.dtype)
        recon = jnp.einsum("bk,bkd->bd", z_k, jnp.take(w_dec, idx, axis=0)) + b_dec
        codes = jnp.zeros_like(pre).at[jnp.arange(x.shape[0])[:, None], idx].set(z_k)
        return SAEOutput(recon, codes, pre)


def init_decoder_bias(model: SparseAutoencoder, x: Float[Array, "s d_in"],
                      method: str = "geometric_median", iters: int = 100) -> None:
    """Sets b_dec from data: the mean, or the geometric median (Weiszfeld's algorithm).

    The geometric median minimises Σ‖x_i − b‖ and is robust to the heavy tails of real
    activations (Bricken et al. 2023).
    """
    _checks.one_of("method", method, ("mean", "geometric_median"))
    x = _checks.float_array("x", x, ndims=(2,))
    if x.shape[1] != model.config.d_in:
        raise ValueError(f"x must have {model.config.d_in} columns, got {x.shape[1]}")
    b = x.mean(0)
    if method == "geometric_median":
        def body(_, b):
            w = 1.0 / jnp.maximum(jnp.linalg.norm(x - b, axis=1), 1e-8)
            return (w[:, None] * x).sum(0) / w.sum()

        b = jax.lax.fori_loop(0, iters, body, b)
    model.b_dec[...] = b


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
