"""A pure, data-parallel SAE train step: (state, batch) → (state, metrics).

The step is written once with an optional ``axis_name``: given one, gradients and metrics are
averaged over that mesh axis with ``lax.pmean``, so the same function runs under ``jax.shard_map``
(or ``pmap``); without one it runs under ``jax.jit`` with a data-sharded batch and XLA inserts the
reduction. Parameters are a plain dict pytree (``nnx.split`` once, ``nnx.merge`` inside the step).

:func:`fit` uses the second form over a 1-D ``("data",)`` mesh of every device (:func:`data_mesh`):
parameters and optimiser state replicated, each batch split along its rows. The same code runs
on many machines after ``jax.distributed.initialize()``: every process builds the same global
batch (the data position is the step) and keeps the rows of its own devices.

After every update the decoder keeps unit-norm atoms: the gradient component parallel to each
atom is removed before the optimiser sees it, and the atoms are renormalised after.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from superjax import _checks, losses, models, report


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


def data_mesh(devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over the first ``devices`` devices (default: all of them, on every
    process after ``jax.distributed.initialize``)."""
    available = jax.device_count()
    if devices is None:
        devices = available
    _checks.positive_int("devices", devices, maximum=available)
    if devices < available and jax.process_count() > 1:
        raise ValueError(f"devices={devices}: a run over {jax.process_count()} processes uses "
                         f"all {available} devices")
    return jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:devices])


def _plain(mesh: jax.sharding.Mesh) -> bool:
    """A mesh of just the default device: arrays stay uncommitted, as in plain one-device JAX
    (committing them would give every later eager op on them a second compiled version)."""
    return mesh.devices.size == 1 and mesh.devices.flat[0] == jax.devices()[0]


def _on_mesh(tree: Any, sharding: NamedSharding) -> Any:
    """Copies arrays that hold the same global value on every process onto ``sharding`` (copies,
    so the donating train step never deletes a caller's array)."""
    if _plain(sharding.mesh):
        return jax.device_put(tree, may_alias=False)
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding, may_alias=False)

    def place(x):  # another process owns some shards: each process fills its own
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, tree)


def init_stack(config: models.SAEConfig, tx: optax.GradientTransformation, seeds: list[int],
               init_decoder: Array | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """One TrainState per seed, stacked along a leading axis (for a vmapped sweep).
    ``init_decoder``: see :func:`fit`."""
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    pairs = [init_state(_initial_model(config, s, init_decoder), tx) for s in seeds]
    return pairs[0][0], jax.tree.map(lambda *xs: jnp.stack(xs), *(p[1] for p in pairs))


def _initial_model(sae: models.SAEConfig, seed: int, init_decoder: Array | None
                   ) -> models.SparseAutoencoder:
    model = models.SparseAutoencoder(sae, rngs=nnx.Rngs(seed))
    if init_decoder is not None:
        init_decoder = _checks.float_array("init_decoder", init_decoder, ndims=(2,))
        if init_decoder.shape != (sae.d_sae, sae.d_in):
            raise ValueError(f"init_decoder must have shape (d_sae, d_in) = "
                             f"{(sae.d_sae, sae.d_in)}, got {init_decoder.shape}")
        model.W_dec[...] = init_decoder
        if hasattr(model, "W_enc"):
            model.W_enc[...] = init_decoder.T
    return model


def _sweep(lams: Any, seeds: Any, ks: Any, seed: int, sae: models.SAEConfig
           ) -> dict[str, list] | None:
    """λ, seed and k of every SAE of a sweep ({"lams", "seeds"[, "ks"]}; λ None: the config's),
    the given lists broadcast to one length (a single value is shared by all)."""
    if lams is None and seeds is None and ks is None:
        return None
    if ks is not None and sae.activation not in models.K_ACTIVATIONS:
        raise ValueError(f"ks sweeps the k of TopK and BatchTopK SAEs, not {sae.activation!r}")
    cols = {"lams": [None] if lams is None else [_checks.real_number("lams", v, minimum=0.0)
                                                 for v in lams],
            "seeds": [seed] if seeds is None else [_checks.positive_int("seeds", v, minimum=0)
                                                   for v in seeds],
            "ks": [None] if ks is None else [_checks.positive_int("ks", v) for v in ks]}
    if ks is not None and max(cols["ks"], default=0) > sae.k:
        raise ValueError(f"ks must be <= the SAE's k = {sae.k}, the static bound of every "
                         f"member's selection (build its SAEConfig with the largest k); "
                         f"got {max(cols['ks'])}")
    size = max(len(v) for v in cols.values())
    if any(len(v) not in (1, size) for v in cols.values()):
        given = {"λ": lams, "seeds": seeds, "k values": ks}
        raise ValueError("lams, seeds and ks must be non-empty and of one length (or one of them "
                         "a single value), got " + " and ".join(
                             f"{len(v)} {name}" for name, v in given.items() if v is not None))
    if ks is None:
        del cols["ks"]
    return {name: v * (size // len(v)) for name, v in cols.items()}


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, axis_name: str | None = None,
    train_decoder: bool = True, k_aux: int = 0, aux_coef: float = 1 / 32,
):
    """Returns the pure train step ``step(state, batch, lam, dead, k) -> (state, metrics)``.

    ``lam`` is the sparsity coefficient (L1 for ReLU, L0 for JumpReLU; unused by TopK variants),
    ``k`` the number of active latents of TopK variants (None: the model's ``config.k``, which
    bounds it). Both are arguments, not constants, so a sweep is one compiled step:
    ``jax.vmap(step, in_axes=(0, None, 0, 0, 0))`` trains a stack of SAEs (different seeds, λ
    or k) on one shared batch. ``dead``: the dead-latent mask for AuxK, or None.

    Args:
      graphdef: from :func:`init_state`.
      tx: the optax transformation used to build the state.
      axis_name: mesh axis to average gradients and metrics over, or None (see module docstring).
      train_decoder: False freezes W_dec (e.g. at the true dictionary, to measure the encoder
        alone); its gradient is zeroed, so Adam leaves it exactly unchanged.
      k_aux, aux_coef: the AuxK loss (:func:`superjax.losses.auxk_loss`), used when the step is
        given a ``dead`` latent mask and k_aux > 0.
    """

    def loss_fn(params, batch, lam, dead, k):
        return losses.sae_loss(nnx.merge(graphdef, params), batch, lam, dead=dead, k_aux=k_aux,
                               aux_coef=aux_coef, k=k)

    def step(state: TrainState, batch: Float[Array, "b d"], lam: float | Array = 0.0,
             dead: Array | None = None, k: Array | None = None
             ) -> tuple[TrainState, dict[str, Any]]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, lam,
                                                                       dead, k)
        if axis_name is not None:
            grads, loss, aux = jax.lax.pmean((grads, loss, aux), axis_name)
        w_dec = state.params["W_dec"]
        dec_grad = (models.remove_parallel_gradient(w_dec, grads["W_dec"]) if train_decoder
                    else jnp.zeros_like(w_dec))
        grads = {**grads, "W_dec": dec_grad}
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if train_decoder:
            new_dec = params["W_dec"]
            params = {**params, "W_dec": new_dec / jnp.maximum(
                jnp.linalg.norm(new_dec, axis=1, keepdims=True), 1e-12)}
        metrics = {"loss": loss, **aux._asdict(), "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Training-loop settings (all of them are recorded in, and checked against, checkpoints).

    Attributes:
      steps: total optimiser steps.
      lam: sparsity coefficient.
      learning_rate, warmup_steps, clip_norm: see :func:`optimizer`.
      log_every: steps between metric records (metrics.jsonl) and progress-bar updates.
      checkpoint_every: steps between checkpoints (and one at the end).
      dead_window: a latent that has not fired on this many consecutive samples counts as dead.
      train_decoder: False keeps W_dec at its initial value (see ``init_decoder`` of :func:`fit`).
      k_aux: AuxK against dead latents: the k_aux largest dead pre-activations reconstruct the
        residual (Gao et al. 2024 use d_in/2); 0 turns it off. aux_coef: its weight (1/32).
    """

    steps: int
    lam: float = 0.0
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    clip_norm: float = 1.0
    log_every: int = 50
    checkpoint_every: int = 500
    dead_window: int = 10_000
    train_decoder: bool = True
    k_aux: int = 0
    aux_coef: float = 1 / 32

    def __post_init__(self):
        _checks.positive_int("steps", self.steps)
        _checks.real_number("lam", self.lam, minimum=0.0)
        _checks.real_number("learning_rate", self.learning_rate, minimum=0.0, strict_min=True)
        _checks.positive_int("warmup_steps", self.warmup_steps, minimum=0)
        _checks.real_number("clip_norm", self.clip_norm, minimum=0.0)
        _checks.positive_int("log_every", self.log_every)
        _checks.positive_int("checkpoint_every", self.checkpoint_every)
        _checks.positive_int("dead_window", self.dead_window)
        _checks.positive_int("k_aux", self.k_aux, minimum=0)
        _checks.real_number("aux_coef", self.aux_coef, minimum=0.0)


class FitResult(NamedTuple):
    """``params`` live on this process's first device (one copy of the replicated weights).
    ``sweep``: a sweep's λ, seed (and k) per SAE, in the order of the stacked ``params``."""

    params: dict[str, Array]
    history: list[dict[str, float]]
    resumed_from: int | None
    seconds: float
    sweep: dict[str, list] | None = None


def _record(metrics: dict[str, Any], stacked: bool) -> dict[str, float | list[float]]:
    """The scalar metrics as floats (a sweep's as one list per metric, one value per SAE)."""
    return {k: np.asarray(v).tolist() for k, v in jax.device_get(metrics).items()
            if np.ndim(v) == int(stacked)}


def fit(
    sae: models.SAEConfig,
    batches: Callable[[int], Float[Array, "b d"]],
    config: FitConfig,
    out: str | pathlib.Path | None = None,
    *,
    seed: int = 0,
    init_decoder: Float[Array, "d_sae d_in"] | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    lams: Any = None,
    seeds: Any = None,
    ks: Any = None,
) -> FitResult:
    """Trains an SAE; with ``out``, writes metrics.jsonl and checkpoints and resumes from them.

    ``batches(step)`` must return the batch of that step (e.g. :func:`superjax.data.batch_at`):
    the data position is the step, so a resumed run sees exactly the batches an uninterrupted run
    would have seen, and finishes with exactly its parameters. ``init_decoder`` (unit rows) sets
    W_dec and the encoder to its transpose, e.g. the true dictionary with
    ``config.train_decoder=False``.

    Training is data-parallel over ``mesh`` (default :func:`data_mesh`: every device): the
    state is replicated and each batch split along its rows, so the batch size must be a multiple
    of the mesh size. Over several processes every process calls ``fit`` with the same arguments
    and ``batches`` returning the same global batch; process 0 writes metrics.jsonl and shows
    progress, and orbax coordinates the checkpoints. A run resumed on the same mesh finishes
    exactly as an uninterrupted one; on another device count, within float rounding.

    ``lams``, ``seeds`` and/or ``ks`` train a sweep of SAEs in one compiled step (vmapped over
    the stacked states, every SAE on the same batch): one SAE per λ (replacing ``config.lam``),
    per initialisation seed (replacing ``seed``) and, for TopK and BatchTopK, per number of
    active latents (each ≤ ``sae.k``, the static bound); a single value is shared by all. Then
    every metric in the history is a list with one value per SAE, and ``params`` are stacked
    along a leading axis in that order.

    Raises:
      FloatingPointError: the loss became NaN/Inf (the message names the step; no checkpoint is
        written from a non-finite state).
      superjax.checkpoint.CheckpointError: ``out`` holds a checkpoint of another configuration,
        or an unreadable one.
    """
    from tqdm.auto import tqdm

    from superjax import checkpoint

    tx = optimizer(config.learning_rate, warmup_steps=config.warmup_steps,
                   total_steps=config.steps, clip_norm=config.clip_norm or None)
    sweep = _sweep(lams, seeds, ks, seed, sae)
    record = {**dataclasses.asdict(sae), **dataclasses.asdict(config), "seed": seed}
    if sweep is None:
        graphdef, state = init_state(_initial_model(sae, seed, init_decoder), tx)
        lam, k, shape = config.lam, None, (sae.d_sae,)
    else:
        graphdef, state = init_stack(sae, tx, sweep["seeds"], init_decoder)
        sweep["lams"] = [config.lam if v is None else v for v in sweep["lams"]]
        lam, shape = jnp.asarray(sweep["lams"], jnp.float32), (len(sweep["lams"]), sae.d_sae)
        k = jnp.asarray(sweep["ks"], jnp.int32) if "ks" in sweep else None
        record["sweep"] = sweep
    mesh = data_mesh() if mesh is None else mesh
    replicated, by_rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    plain = _plain(mesh)
    loop = _on_mesh({"train": state, "since_fired": jnp.zeros(shape, jnp.int32)}, replicated)
    primary = report.is_writer()

    ckpt, start, resumed = None, 0, None
    if out is not None:
        out = pathlib.Path(out)
        ckpt = checkpoint.Checkpointer(out / "checkpoints")
        if ckpt.latest_step() is not None:
            start, loop = ckpt.restore(loop, record)
            resumed = start
    history = _load_history(out, start, rewrite=primary)

    train_step = make_train_step(graphdef, tx, train_decoder=config.train_decoder,
                                 k_aux=config.k_aux, aux_coef=config.aux_coef)
    if sweep is not None:  # every SAE of the stack on the one batch
        train_step = jax.vmap(train_step, in_axes=(0, None, 0, 0, 0))

    @functools.partial(jax.jit, donate_argnums=0,
                       out_shardings=None if plain else replicated)
    def step(loop, batch):
        dead = loop["since_fired"] >= config.dead_window if config.k_aux else None
        new_state, metrics = train_step(loop["train"], batch, lam, dead, k)
        since = jnp.where(metrics["density"] > 0, 0, loop["since_fired"] + batch.shape[0])
        metrics["dead_fraction"] = jnp.mean(since >= config.dead_window, axis=-1)
        return {"train": new_state, "since_fired": since}, metrics

    began = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start, disable=not (progress and primary),
               unit="step", desc="fit")
    pending = None  # (step, loss) of the previous step, read after the next step is dispatched
    for s in range(start, config.steps):
        loop, metrics = step(loop, _rows_on(batches(s), by_rows, sae.d_in, plain))
        if pending is not None:
            _check_finite(*pending, sweep)
        pending = (s + 1, metrics["loss"])
        done = s + 1
        if done % config.log_every == 0 or done == config.steps:
            row = {"step": done, **_record(metrics, stacked=sweep is not None)}
            _check_finite(done, row["loss"], sweep)
            history.append(row)
            if primary:
                _append_history(out, row)
            # a sweep shows its means (dead: the largest fraction)
            bar.set_postfix(loss=f"{np.mean(row['loss']):.4g}", l0=f"{np.mean(row['l0']):.1f}",
                            fvu=f"{np.mean(row['fvu']):.3f}",
                            dead=f"{np.max(row['dead_fraction']):.2f}")
        bar.update()
        if ckpt is not None and (done % config.checkpoint_every == 0 or done == config.steps):
            _check_finite(done, metrics["loss"], sweep)
            ckpt.save(done, loop, record)
    bar.close()
    if pending is not None:
        _check_finite(*pending, sweep)
    if ckpt is not None:
        ckpt.close()
    params = loop["train"].params
    if not plain:
        params = jax.tree.map(lambda x: x.addressable_data(0), params)
    return FitResult(params, history, resumed, time.perf_counter() - began, sweep)


def _rows_on(batch, sharding: NamedSharding, d_in: int, plain: bool) -> Array:
    """The step's batch, split by rows over the mesh (a clear error for a wrong shape)."""
    if jnp.ndim(batch) != 2 or jnp.shape(batch)[1] != d_in:
        raise ValueError(f"batches(step) must return a (batch, {d_in}) array, got shape "
                         f"{jnp.shape(batch)}")
    devices = sharding.mesh.size
    if plain:  # see _plain: the batch stays as it is
        return batch
    if jnp.shape(batch)[0] % devices:
        raise ValueError(f"a batch of {jnp.shape(batch)[0]} rows cannot be split evenly over "
                         f"{devices} devices: use a batch size that is a multiple of {devices}, "
                         f"or fewer devices (fit(mesh=train.data_mesh(n)), superjax train-sae "
                         f"--devices n, or hide some with CUDA_VISIBLE_DEVICES)")
    return _on_mesh(batch, sharding)


def _check_finite(step: int, loss, sweep: dict[str, list] | None = None) -> None:
    values = np.atleast_1d(np.asarray(loss, np.float64))
    if not np.isfinite(values).all():
        i = int(np.argmin(np.isfinite(values)))
        labels = {"lams": "λ", "seeds": "seed", "ks": "k"}
        which = "" if sweep is None else (f" of SAE {i} of the sweep (" + ", ".join(
            f"{labels[name]} = {v[i]}" for name, v in sweep.items()) + ")")
        raise FloatingPointError(f"training diverged: the loss{which} is {values[i]} at step "
                                 f"{step}; lower the learning rate or check the data for NaN/Inf")


def _load_history(out: pathlib.Path | None, upto: int, rewrite: bool = True
                  ) -> list[dict[str, float]]:
    """Metric records up to the resumed step (later ones belong to the lost part of the run);
    ``rewrite`` drops the later ones from the file too."""
    if out is None or not (out / "metrics.jsonl").exists():
        return []
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    rows = [r for r in rows if r["step"] <= upto]
    if rewrite:
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _append_history(out: pathlib.Path | None, row: dict[str, float]) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
