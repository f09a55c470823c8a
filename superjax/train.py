"""A pure, data-parallel SAE train step: (state, batch) → (state, metrics).

The step is written once with an optional ``axis_name``: given one, gradients and metrics are
averaged over that mesh axis with ``lax.pmean``, so the same function runs under ``jax.shard_map``
(or ``pmap``); without one it runs under ``jax.jit`` with a data-sharded batch and XLA inserts the
reduction. Parameters are a plain dict pytree (``nnx.split`` once, ``nnx.merge`` inside the step).

After every update the decoder keeps unit-norm atoms: the gradient component parallel to each
atom is removed before the optimiser sees it, and the atoms are renormalised after.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Float

from superjax import _checks, losses, models


class TrainState(NamedTuple):
    """Everything that changes during training."""

    params: dict[str, Array]
    opt_state: optax.OptState
    step: Array


def optimizer(
    learning_rate: float = 1e-3, *, warmup_steps: int = 0, total_steps: int = 1,
    clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """Adam with linear warm-up then cosine decay, after global-norm gradient clipping."""
    _checks.real_number("learning_rate", learning_rate, minimum=0.0, strict_min=True)
    _checks.positive_int("warmup_steps", warmup_steps, minimum=0)
    total_steps = _checks.positive_int("total_steps", total_steps)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0 if warmup_steps else learning_rate, learning_rate, warmup_steps,
        max(total_steps, warmup_steps + 1), end_value=0.1 * learning_rate)
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    return optax.chain(*parts, optax.adam(schedule))


def init_state(model: models.SparseAutoencoder, tx: optax.GradientTransformation
               ) -> tuple[nnx.GraphDef, TrainState]:
    """Splits the model into its static graph and a pure parameter dict, and inits the optimiser."""
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    return graphdef, TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def init_stack(config: models.SAEConfig, tx: optax.GradientTransformation, seeds: list[int]
               ) -> tuple[nnx.GraphDef, TrainState]:
    """One TrainState per seed, stacked along a leading axis (for a vmapped sweep)."""
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    pairs = [init_state(models.SparseAutoencoder(config, rngs=nnx.Rngs(s)), tx) for s in seeds]
    return pairs[0][0], jax.tree.map(lambda *xs: jnp.stack(xs), *(p[1] for p in pairs))


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, axis_name: str | None = None,
):
    """Returns the pure train step ``step(state, batch, lam) -> (state, metrics)``.

    ``lam`` is the sparsity coefficient (L1 for ReLU, L0 for JumpReLU; unused by TopK variants).
    It is an argument, not a constant, so a sweep is one compiled step:
    ``jax.vmap(step, in_axes=(0, None, 0))`` trains a stack of SAEs (different seeds and λ) on
    one shared batch.

    Args:
      graphdef: from :func:`init_state`.
      tx: the optax transformation used to build the state.
      axis_name: mesh axis to average gradients and metrics over, or None (see module docstring).
    """

    def loss_fn(params, batch, lam):
        return losses.sae_loss(nnx.merge(graphdef, params), batch, lam)

    def step(state: TrainState, batch: Float[Array, "b d"], lam: float | Array = 0.0
             ) -> tuple[TrainState, dict[str, Any]]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, lam)
        if axis_name is not None:
            grads, loss, aux = jax.lax.pmean((grads, loss, aux), axis_name)
        w_dec = state.params["W_dec"]
        grads = {**grads, "W_dec": models.remove_parallel_gradient(w_dec, grads["W_dec"])}
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_dec = params["W_dec"]
        params = {**params, "W_dec": new_dec / jnp.maximum(
            jnp.linalg.norm(new_dec, axis=1, keepdims=True), 1e-12)}
        metrics = {"loss": loss, **aux._asdict(), "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step
