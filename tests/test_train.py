"""The train step: it learns, keeps unit atoms, and runs identically sharded and unsharded."""

import chex
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from superjax import data, models, train


def _setup(activation="relu", seed=0):
    cfg = data.DataConfig(m=8, n=16, k=3)
    a = data.make_dictionary(jax.random.key(seed), cfg)
    model = models.SparseAutoencoder(models.SAEConfig(8, 16, activation, k=3),
                                     rngs=nnx.Rngs(seed))
    tx = train.optimizer(3e-3, warmup_steps=5, total_steps=200)
    graphdef, state = train.init_state(model, tx)
    return cfg, a, tx, graphdef, state


def test_simulated_devices_are_available():
    assert jax.device_count() == 4


def test_training_reduces_loss_and_keeps_unit_atoms():
    cfg, a, tx, graphdef, state = _setup()
    step = jax.jit(train.make_train_step(graphdef, tx))
    key = jax.random.key(1)
    first = None
    for s in range(200):
        state, metrics = step(state, data.batch_at(key, s, a, cfg, 256).y, 1e-3)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < 0.2 * first
    assert int(state.step) == 200
    chex.assert_trees_all_close(jnp.linalg.norm(state.params["W_dec"], axis=1), jnp.ones(16),
                                atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_sharded_step_equals_single_device_step(activation):
    cfg, a, tx, graphdef, state = _setup(activation)
    batch = data.batch_at(jax.random.key(2), 0, a, cfg, 64).y
    single = jax.jit(train.make_train_step(graphdef, tx))
    # Auto axes: under jit the compiler propagates the batch sharding (classic data parallelism).
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    # shard_map: per-device code with an explicit gradient pmean over the data axis.
    mapped = jax.jit(jax.shard_map(train.make_train_step(graphdef, tx, axis_name="data"),
                                   mesh=mesh, in_specs=(P(), P("data"), P()),
                                   out_specs=(P(), P())))
    # jit with a data-sharded batch: XLA inserts the reduction itself.
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    lam = jnp.float32(1e-2)
    ref_state, ref_metrics = single(state, batch, lam)
    for fn, b in ((mapped, sharded_batch), (single, sharded_batch)):
        new_state, metrics = fn(state, b, lam)
        chex.assert_trees_all_close(new_state.params, ref_state.params, atol=1e-6, rtol=1e-5)
        assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-5)


def test_optimizer_validation():
    with pytest.raises(ValueError, match="learning_rate must lie in"):
        train.optimizer(0.0)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        train.optimizer(1e-3, total_steps=0)


def test_vmapped_sweep_equals_separate_runs():
    cfg, a, tx, _, _ = _setup()
    sae = models.SAEConfig(8, 16, "relu")
    seeds, lams = [0, 1, 2], jnp.array([1e-3, 1e-2, 3e-2])
    graphdef, stack = train.init_stack(sae, tx, seeds)
    step = train.make_train_step(graphdef, tx)
    sweep = jax.jit(jax.vmap(step, in_axes=(0, None, 0)))
    key = jax.random.key(4)
    for s in range(5):
        stack, metrics = sweep(stack, data.batch_at(key, s, a, cfg, 128).y, lams)
    assert metrics["loss"].shape == (3,)
    for i, seed in enumerate(seeds):
        _, state = train.init_state(models.SparseAutoencoder(sae, rngs=nnx.Rngs(seed)), tx)
        for s in range(5):
            state, _ = jax.jit(step)(state, data.batch_at(key, s, a, cfg, 128).y, lams[i])
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], stack.params),
                                    state.params, atol=1e-5, rtol=1e-5)


def test_frozen_decoder_stays_exactly_fixed():
    cfg, a, tx, graphdef, state = _setup()
    step = jax.jit(train.make_train_step(graphdef, tx, train_decoder=False))
    w0 = state.params["W_dec"]
    for s in range(5):
        state, _ = step(state, data.batch_at(jax.random.key(5), s, a, cfg, 64).y, 1e-3)
    chex.assert_trees_all_equal(state.params["W_dec"], w0)
    assert not bool(jnp.allclose(state.params["W_enc"], w0.T))  # the encoder did train


def test_auxk_loss_closed_form_and_zero_without_dead_latents():
    from superjax import losses

    model = models.SparseAutoencoder(models.SAEConfig(6, 10, "topk", k=2), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (32, 6))
    out = model(x)
    w = model.W_dec[...]
    dead = jnp.arange(10) >= 6
    got = losses.auxk_loss(x, out, w, dead, 3)
    e = x - out.reconstruction
    pre = jnp.where(dead, out.pre_activations, -jnp.inf)
    # Direct: per sample, the 3 largest dead pre-activations (ReLU'd) times their atoms.
    order = jnp.argsort(-pre, axis=1)[:, :3]
    vals = jax.nn.relu(jnp.take_along_axis(pre, order, 1))
    e_hat = jnp.einsum("bk,bkd->bd", vals, w[order])
    want = jnp.sum((e - e_hat) ** 2) / jnp.sum((e - e.mean(0)) ** 2)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert float(losses.auxk_loss(x, out, w, jnp.zeros(10, bool), 3)) == 0.0
    loss, aux = losses.sae_loss(model, x, dead=dead, k_aux=3, aux_coef=0.5)
    plain, _ = losses.sae_loss(model, x)
    assert float(loss) == pytest.approx(float(plain) + 0.5 * float(want), rel=1e-5)
    assert float(aux.auxk) == pytest.approx(float(want), rel=1e-5)


def test_auxk_revives_dead_latents():
    # A TopK SAE (as many latents as true features) whose last 24 latents start with tiny
    # encoder rows: they are rarely among the top k, so without AuxK little gradient reaches
    # them and many stay dead; with AuxK their positive pre-activations reconstruct the
    # residual, they grow towards what the live latents miss, and come back.
    cfg = data.DataConfig(m=16, n=32, k=3)
    a = data.make_dictionary(jax.random.key(0), cfg)

    def run(k_aux):
        model = models.SparseAutoencoder(models.SAEConfig(16, 32, "topk", k=3),
                                         rngs=nnx.Rngs(1))
        model.W_enc[...] = model.W_enc[...] * jnp.where(jnp.arange(32) >= 8, 0.01, 1.0)
        tx = train.optimizer(3e-3, total_steps=600)
        graphdef, state = train.init_state(model, tx)
        step = train.make_train_step(graphdef, tx, k_aux=k_aux)

        def body(s, carry):
            state, since, _ = carry
            state, m = step(state, data.batch_at(jax.random.key(1), s, a, cfg, 256).y, 0.0,
                            since >= 512)
            return state, jnp.where(m["density"] > 0, 0, since + 256), m["fvu"]

        state, _, fvu = jax.jit(lambda st: jax.lax.fori_loop(
            0, 600, body, (st, jnp.zeros(32, jnp.int32), jnp.zeros(()))))(state)
        test = data.sample_batch(jax.random.key(2), a, cfg, 4096).y
        codes = nnx.merge(graphdef, state.params)(test).codes
        return float(jnp.mean(~jnp.any(codes > 0, axis=0))), float(fvu)

    dead_off, fvu_off = run(0)
    dead_on, fvu_on = run(8)
    assert dead_off >= 0.3 and dead_on <= 0.1, (dead_off, dead_on)
    assert fvu_on < 0.7 * fvu_off
