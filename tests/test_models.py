"""SAE modules and losses: structural sparsity, STE gradients, invariances, closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superjax import losses, models


def _model(activation="relu", d_in=8, d_sae=16, k=3, seed=0, kernel="dense"):
    cfg = models.SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, k=k, topk_kernel=kernel)
    return models.SparseAutoencoder(cfg, rngs=nnx.Rngs(seed))


def _x(batch=32, d=8, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, d))


def test_initialisation_unit_atoms_and_tied_encoder():
    m = _model()
    chex.assert_trees_all_close(jnp.linalg.norm(m.W_dec[...], axis=1), jnp.ones(16), atol=1e-6)
    chex.assert_trees_all_close(m.W_enc[...], m.W_dec[...].T)
    assert m.dictionary.shape == (8, 16)
    out = m(_x())
    chex.assert_shape([out.reconstruction, out.codes, out.pre_activations],
                      [(32, 8), (32, 16), (32, 16)])


def test_topk_keeps_exactly_k_and_batchtopk_k_times_batch():
    x = _x() + 3.0  # make pre-activations positive so ReLU does not remove any kept entry
    m = _model("topk")
    m.b_enc[...] = jnp.full(16, 100.0)
    codes = m(x).codes
    assert np.all(np.asarray(jnp.sum(codes != 0, axis=1)) == 3)
    mb = _model("batchtopk")
    mb.b_enc[...] = jnp.full(16, 100.0)
    codes = mb(x).codes
    assert int(jnp.sum(codes != 0)) == 3 * 32
    counts = np.asarray(jnp.sum(codes != 0, axis=1))
    assert counts.min() >= 0 and counts.max() <= 16


def test_topk_selects_the_largest_pre_activations():
    pre = jnp.array([[0.1, 5.0, -1.0, 3.0], [2.0, 1.0, 4.0, 0.5]])
    np.testing.assert_array_equal(models.topk_mask(pre, 2), [[0, 1, 0, 1], [1, 0, 1, 0]])
    # Batch-wide: the 4 largest of all 8 entries are 5, 4, 3 and 2.
    np.testing.assert_array_equal(models.batch_topk_mask(pre, 2), [[0, 1, 0, 1], [1, 0, 1, 0]])
    wide = jnp.array([[9.0, 8.0, 7.0, 6.0], [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_array_equal(jnp.sum(models.batch_topk_mask(wide, 2), axis=1), [4, 0])


def test_jumprelu_straight_through_gradient_matches_rectangle_kernel():
    eps = 0.1
    pre = jnp.array([[0.52, 0.10, 0.90], [0.47, 0.30, 0.96]])
    theta = jnp.array([0.5, 0.5, 1.0])

    def l0(t):
        return jnp.sum(models.heaviside_ste(pre, t, eps))

    grad = jax.grad(l0)(theta)
    # dL0/dθ_j = −(1/ε)·#{b : |pre_bj − θ_j| < ε/2}
    # Column 0: 0.52 and 0.47 lie within ε/2 of θ = 0.5; column 2: only 0.96 lies within ε/2 of 1.
    np.testing.assert_allclose(grad, [-2 / eps, 0.0, -1 / eps], rtol=1e-6)
    assert float(l0(theta)) == 1.0  # only 0.52 is above its threshold
    # JumpReLU passes the gradient to x where the unit is open, like ReLU.
    gx = jax.grad(lambda p: jnp.sum(models.jumprelu(p, theta, eps)))(pre)
    np.testing.assert_array_equal(gx, (pre > theta).astype(jnp.float32))


def test_jumprelu_threshold_is_float32_and_trained_by_loss():
    m = _model("jumprelu")
    assert m.threshold[...].dtype == jnp.float32
    m.config = models.SAEConfig(d_in=8, d_sae=16, activation="jumprelu",
                                jumprelu_init_threshold=1e-3, jumprelu_bandwidth=1.0)
    grads = nnx.grad(lambda mm: losses.sae_loss(mm, _x(), lam=1.0)[0])(m)
    assert float(jnp.abs(grads.threshold[...]).sum()) > 0


def test_l1_penalty_is_invariant_to_encoder_decoder_rescaling():
    # Scaling atom j by c and its code by 1/c leaves x̂ and the norm-weighted L1 unchanged.
    m = _model("relu")
    x = _x()
    loss_a, aux_a = losses.sae_loss(m, x, lam=0.3)
    c = jnp.linspace(0.5, 2.0, 16)
    m.W_dec[...] = m.W_dec[...] * c[:, None]
    m.W_enc[...] = m.W_enc[...] / c[None, :]
    m.b_enc[...] = m.b_enc[...] / c
    loss_b, aux_b = losses.sae_loss(m, x, lam=0.3)
    assert float(loss_b) == pytest.approx(float(loss_a), rel=1e-5)
    assert float(aux_b.sparsity) == pytest.approx(float(aux_a.sparsity), rel=1e-5)


def test_l1_loss_closed_form():
    out = models.SAEOutput(reconstruction=jnp.array([[1.0, 0.0]]), codes=jnp.array([[2.0, -1.0]]),
                           pre_activations=jnp.zeros((1, 2)))
    w_dec = jnp.array([[3.0, 4.0], [0.0, 1.0]])  # row norms 5 and 1
    loss, aux = losses.l1_sae_loss(jnp.array([[1.0, 2.0]]), out, w_dec, lam=0.5)
    assert float(aux.mse) == 4.0 and float(aux.sparsity) == 11.0 and float(aux.l0) == 2.0
    assert float(loss) == pytest.approx(4.0 + 0.5 * 11.0)


def test_identity_sae_reconstructs_non_negative_data_exactly():
    m = _model("relu", d_in=8, d_sae=8)
    m.W_dec[...] = jnp.eye(8)
    m.W_enc[...] = jnp.eye(8)
    x = jnp.abs(_x())
    loss, aux = losses.sae_loss(m, x, lam=0.0)
    assert float(loss) < 1e-10 and float(aux.fvu) < 1e-10


def test_decoder_normalisation_and_parallel_gradient_removal():
    m = _model()
    m.W_dec[...] = m.W_dec[...] * 3.0
    models.normalize_decoder(m)
    chex.assert_trees_all_close(jnp.linalg.norm(m.W_dec[...], axis=1), jnp.ones(16), atol=1e-6)
    g = jax.random.normal(jax.random.key(3), (16, 8))
    g_perp = models.remove_parallel_gradient(m.W_dec[...], g)
    chex.assert_trees_all_close(jnp.sum(g_perp * m.W_dec[...], axis=1), jnp.zeros(16), atol=1e-6)


def test_loss_is_jittable_through_split_merge():
    m = _model("topk")
    graphdef, state = nnx.split(m)

    @jax.jit
    def loss_fn(state, x):
        return losses.sae_loss(nnx.merge(graphdef, state), x)[0]

    assert float(loss_fn(state, _x())) == pytest.approx(float(losses.sae_loss(m, _x())[0]),
                                                         rel=1e-6)


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"d_in": 8, "d_sae": 16, "activation": "gelu"}, ValueError, "activation must be one of"),
    ({"d_in": 8, "d_sae": 16, "activation": "topk", "k": 17}, ValueError, "k must be"),
    ({"d_in": 8, "d_sae": 16, "activation": "topk"}, ValueError, "k must be >= 1"),
    ({"d_in": 0, "d_sae": 16}, ValueError, "d_in must be >= 1"),
    ({"d_in": 8, "d_sae": 16, "jumprelu_bandwidth": 0.0}, ValueError, "jumprelu_bandwidth"),
    ({"d_in": 8, "d_sae": 16, "topk_kernel": "sparse"}, ValueError, "topk_kernel must be"),
    ({"d_in": 8, "d_sae": 16, "activation": "relu", "topk_kernel": "gather"}, ValueError,
     "one-layer TopK"),
])
def test_config_validation(kwargs, err, match):
    with pytest.raises(err, match=match):
        models.SAEConfig(**kwargs)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(batch, 8\)"):
        _model()(jnp.ones((4, 7)))


def test_lista_encoder_is_unrolled_ista_through_the_decoder():
    cfg = models.SAEConfig(d_in=8, d_sae=16, encoder="lista", lista_steps=2)
    m = models.SparseAutoencoder(cfg, rngs=nnx.Rngs(0))
    x = _x()
    w_dec, w_enc, s = m.W_dec[...], m.W_enc[...], m.S[...]
    z = jax.nn.relu(x @ w_enc)  # biases start at zero
    for t in range(2):
        z_pre = z + (x - z @ w_dec) @ s[t]
        z = jax.nn.relu(z_pre)
    chex.assert_trees_all_close(m(x).codes, z, atol=1e-6)
    chex.assert_trees_all_close(s[0], 0.5 * w_dec.T)
    assert cfg.encoder_flops() == 2 * 8 * 16 + 2 * 4 * 8 * 16


def test_mlp_encoder_starts_as_the_one_layer_encoder_and_learns_its_correction():
    cfg = models.SAEConfig(d_in=8, d_sae=16, encoder="mlp", hidden=24)
    m = models.SparseAutoencoder(cfg, rngs=nnx.Rngs(0))
    one = models.SparseAutoencoder(models.SAEConfig(d_in=8, d_sae=16), rngs=nnx.Rngs(0))
    x = _x()
    out = m(x)
    chex.assert_shape(out.codes, (32, 16))
    assert m.W_hidden[...].shape == (8, 24) and m.W_out[...].shape == (24, 16)
    # Same decoder draw, encoder at W_decᵀ, zero correction: the one-layer SAE's function.
    chex.assert_trees_all_close(m.W_dec[...], one.W_dec[...])
    chex.assert_trees_all_close(out.pre_activations, one(x).pre_activations, atol=1e-5)
    # The correction's output layer gets a gradient at initialisation (its input layer cannot yet).
    grads = nnx.grad(lambda mm: jnp.sum(mm(x).codes))(m)
    assert float(jnp.abs(grads.W_out[...]).max()) > 0
    assert cfg.encoder_flops() == 2 * 8 * 16 + 2 * 8 * 24 + 2 * 24 * 16


def test_decoder_bias_from_geometric_median_resists_outliers():
    x = jax.random.normal(jax.random.key(5), (400, 8)) + 2.0
    outliers = x.at[:20].set(1000.0)
    m = _model()
    models.init_decoder_bias(m, outliers, "geometric_median")
    assert float(jnp.max(jnp.abs(m.b_dec[...] - 2.0))) < 0.3
    models.init_decoder_bias(m, outliers, "mean")
    assert float(jnp.min(m.b_dec[...])) > 40.0  # the mean is dragged away
    with pytest.raises(ValueError, match="method must be one of"):
        models.init_decoder_bias(m, x, "median")
    with pytest.raises(ValueError, match="8 columns"):
        models.init_decoder_bias(m, x[:, :5])


def test_fista_encoder_is_per_sample_sparse_coding_with_no_gradient_through_codes():
    from superjax import sparse_coding

    cfg = models.SAEConfig(8, 16, encoder="fista", fista_steps=60, fista_lam=0.05)
    model = models.SparseAutoencoder(cfg, rngs=nnx.Rngs(0))
    assert not hasattr(model, "W_enc") and cfg.encoder_flops() == 60 * 4 * 8 * 16
    x = jnp.abs(jax.random.normal(jax.random.key(1), (64, 8)))
    want = sparse_coding.fista_fixed(model.dictionary, x - model.b_dec[...], 0.05, 60,
                                     nonneg=True).codes
    out = model(x)
    chex.assert_trees_all_close(out.codes, want, atol=1e-6)
    # The decoder gradient is that of the loss with the codes held fixed (dictionary learning).
    graphdef, params = nnx.split(model)
    grad = jax.grad(lambda p: losses.sae_loss(nnx.merge(graphdef, p), x, 0.1)[0])(params)

    def fixed(w_dec):
        recon = out.codes @ w_dec + model.b_dec[...]
        return (jnp.mean(jnp.sum((x - recon) ** 2, -1))
                + 0.1 * jnp.mean(jnp.sum(out.codes * jnp.linalg.norm(w_dec, axis=1), -1)))

    chex.assert_trees_all_close(grad["W_dec"][...], jax.grad(fixed)(model.W_dec[...]),
                                atol=1e-5)
    with pytest.raises(ValueError, match="fista encoder gives non-negative L1 codes"):
        models.SAEConfig(8, 16, "topk", k=2, encoder="fista")


@pytest.mark.parametrize("k_aux", [0, 4])
def test_gather_topk_kernel_equals_dense_in_value_and_gradient(k_aux):
    """The "gather" TopK kernel is the same function with the same gradients (and AuxK through
    the pre-activations still trains the encoder)."""
    dense = _model("topk", d_in=8, d_sae=24, k=4, seed=3)
    dense.b_dec[...] = 0.1 * jnp.arange(8.0)
    dense.b_enc[...] = 0.05 * jnp.sin(jnp.arange(24.0))
    graphdef, state = nnx.split(dense)
    gather = nnx.merge(nnx.split(_model("topk", d_in=8, d_sae=24, k=4, kernel="gather"))[0],
                       state)
    x, dead = _x(batch=64), jnp.arange(24) % 3 == 0

    def grads(model):
        def f(m):
            return losses.sae_loss(m, x, dead=dead, k_aux=k_aux)
        return nnx.grad(f, has_aux=True)(model), f(model)

    (g_dense, _), (l_dense, a_dense) = grads(dense)
    (g_gather, _), (l_gather, a_gather) = grads(gather)
    chex.assert_trees_all_close(l_gather, l_dense, rtol=1e-5)
    chex.assert_trees_all_close(a_gather.l0, a_dense.l0)
    chex.assert_trees_all_close(gather(x).codes, dense(x).codes, atol=1e-5)
    chex.assert_trees_all_close(nnx.state(g_gather), nnx.state(g_dense), atol=1e-5, rtol=1e-4)
    assert float(jnp.abs(g_dense.W_enc[...]).max()) > 0


@pytest.mark.parametrize("activation,kernel", [("topk", "dense"), ("topk", "gather"),
                                               ("batchtopk", "dense")])
def test_a_traced_k_is_the_model_with_that_k(activation, kernel):
    """k as a traced argument under a larger static bound (one compiled step for a k sweep) is
    the same function, with the same gradients, as the model built with that k."""
    bound = _model(activation, d_in=8, d_sae=24, k=7, seed=2, kernel=kernel)
    bound.b_enc[...] = 0.05 * jnp.cos(jnp.arange(24.0))
    x, (graphdef, params) = _x(batch=48), nnx.split(bound)

    @jax.jit
    def loss_and_grad(params, k):
        return (jax.value_and_grad(lambda p: losses.sae_loss(nnx.merge(graphdef, p), x, k=k)[0])(
            params), nnx.merge(graphdef, params)(x, k).codes)

    for k in (1, 3, 7):
        own = nnx.merge(nnx.split(_model(activation, d_in=8, d_sae=24, k=k, kernel=kernel))[0],
                        params)
        (value, grad), codes = loss_and_grad(params, jnp.int32(k))
        want_value, want_grad = nnx.value_and_grad(
            lambda m: losses.sae_loss(m, x)[0])(own)  # noqa: B023
        chex.assert_trees_all_close(codes, own(x).codes, atol=1e-6)
        chex.assert_trees_all_close(value, want_value, rtol=1e-6)
        chex.assert_trees_all_close(grad, nnx.state(want_grad), atol=1e-6, rtol=1e-5)
        per_sample = jnp.sum(codes != 0, axis=1)
        assert float(jnp.mean(per_sample)) <= k and (activation == "batchtopk"
                                                     or int(per_sample.max()) <= k)


def test_auto_topk_kernel_is_gather_on_cpu_for_one_layer_topk_only():
    on_cpu = jax.default_backend() == "cpu"
    assert _model("topk", kernel="auto").config.gather_kernel == on_cpu
    assert not _model("batchtopk", kernel="auto").config.gather_kernel
    assert not _model("relu", kernel="auto").config.gather_kernel
    assert not _model("topk", kernel="dense").config.gather_kernel


def test_batch_sum_and_bias_gradient_equal_the_plain_reductions():
    # The matvec forms (XLA:CPU reduces a leading axis ~30x slower) are the same functions.
    y = jax.random.normal(jax.random.key(0), (64, 40))
    b = jax.random.normal(jax.random.key(1), (40,))
    w = jax.random.normal(jax.random.key(2), (64, 40))
    np.testing.assert_allclose(models.batch_sum(y), y.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(models.add_bias(y, b), y + b)

    def loss(add):
        return lambda y, b: jnp.sum(w * jnp.tanh(add(y, b)))

    for got, want in zip(jax.grad(loss(models.add_bias), (0, 1))(y, b),
                         jax.grad(loss(lambda y, b: y + b), (0, 1))(y, b), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # batched (as in a vmapped λ sweep) and in bfloat16 (the result keeps the input's dtype)
    stacked = jax.vmap(models.add_bias)(jnp.stack([y, 2 * y]), jnp.stack([b, -b]))
    np.testing.assert_array_equal(stacked[1], 2 * y - b)
    assert models.batch_sum(y.astype(jnp.bfloat16)).dtype == jnp.bfloat16
