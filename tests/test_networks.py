"""Synthetic world, classifier, and the identifiability / classifier-SAE studies."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superjax import cli, metrics, network_study, networks, world


def _invert(w: world.World, x):
    """g⁻¹ layer by layer: least squares through each matrix, then the inverse leaky ReLU."""
    h = x
    for i in reversed(range(len(w.weights))):
        if i < len(w.weights) - 1:
            h = jnp.where(h >= 0, h, h / w.slope)
        h = jnp.linalg.lstsq(w.weights[i], (h - w.biases[i]).T)[0].T
    return h


def test_generator_is_injective_and_labels_follow_the_prototype_posterior():
    cfg = world.WorldConfig(latents=12, k=3, seed=1)
    w = world.make_world(cfg)
    s = world.sample(jax.random.key(0), w, cfg, 20000)
    assert s.x.shape == (20000, 24) and s.logits.shape == (20000, 24)
    assert np.all((np.asarray(s.z) > 0).sum(1) == 3)
    np.testing.assert_allclose(_invert(w, s.x[:500]), s.z[:500], atol=2e-3)
    # Labels are drawn from softmax(logits): the Bayes rule's accuracy is E[max_c p(c | z)].
    probs = jax.nn.softmax(s.logits)
    hit = np.asarray(jnp.argmax(s.logits, -1) == s.labels, np.float64)
    se = hit.std() / np.sqrt(hit.size)
    assert abs(hit.mean() - float(probs.max(-1).mean())) < 4 * se
    assert float(jnp.std(s.logits)) == pytest.approx(cfg.sharpness, rel=0.15)


def test_disjoint_pairs():
    cfg = world.WorldConfig(latents=10, k=3)
    za, zb = world.disjoint_pairs(jax.random.key(3), cfg, 500)
    a, b = np.asarray(za) > 0, np.asarray(zb) > 0
    assert not np.any(a & b) and np.all((a | b).sum(1) == 6)
    assert np.all(a.sum(1) == 3) and np.all(b.sum(1) == 3)


def test_classifier_learns_separable_classes():
    key_c, key_x = jax.random.split(jax.random.key(0))
    centres = 4.0 * jax.random.normal(key_c, (3, 5))
    labels = jnp.arange(900) % 3
    x = centres[labels] + jax.random.normal(key_x, (900, 5))
    cfg = networks.ClassifierConfig(d_in=5, classes=3, neurons=4, hidden=(32,), steps=300,
                                    learning_rate=3e-3)
    model = networks.train(cfg, x, labels, progress=False).model
    out = networks.apply(model, x)
    assert out.representation.shape == (900, 4) and networks.accuracy(out.logits, labels) > 0.97
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        networks.train(cfg, x, labels + 1, progress=False)


def test_online_training_reaches_the_population_optimum_of_a_softmax_world():
    # Labels from softmax(W x): cross-entropy is a proper scoring rule, so fresh batches drive a
    # linear classifier to logits W x up to a shift common to all classes.
    w = jax.random.normal(jax.random.key(1), (4, 5))

    def sampler(key, size):
        kx, kc = jax.random.split(key)
        x = jax.random.normal(kx, (size, 5))
        return x, jax.random.categorical(kc, x @ w.T)

    cfg = networks.ClassifierConfig(d_in=5, classes=4, neurons=4, hidden=(), steps=3000,
                                    learning_rate=1e-2, weight_decay=0.0)
    model = networks.train_online(cfg, sampler, progress=False).model
    x, labels = sampler(jax.random.key(7), 50000)

    def centred(logits):
        return logits - logits.mean(-1, keepdims=True)

    got, want = centred(networks.apply(model, x).logits), centred(x @ w.T)
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 0.05
    assert float(metrics.cross_entropy(networks.apply(model, x).logits, labels)) == pytest.approx(
        float(metrics.cross_entropy(x @ w.T, labels)), abs=3e-3)
    with pytest.raises(ValueError, match=r"sampler\(key, 256\) must return \(x, labels\)"):
        networks.train_online(cfg, lambda key, size: sampler(key, size)[0], progress=False)
    with pytest.raises(ValueError, match="integer labels"):
        networks.train_online(cfg, lambda key, size: (sampler(key, size)[0], jnp.zeros(size)),
                              progress=False)


@pytest.mark.slow  # 96 s of one CPU; test_demo checks the same properties at N = 32
def test_identifiability_small_world(tmp_path):
    common = dict(latents=12, k=2, samples=4096, test_samples=2048, classifier_steps=1000,
                  sae_steps=600)
    full = network_study.identifiability(
        network_study.IdentifiabilityConfig(neurons=12, **common), tmp_path / "m12",
        progress=False)
    sup = network_study.identifiability(
        network_study.IdentifiabilityConfig(neurons=6, **common), tmp_path / "m6",
        progress=False)
    for rep in (full, sup):
        assert rep["status"] == "ok" and rep["accuracy"] > rep["chance_accuracy"] + 0.1
        # Disjoint supports add up; mismatched pairs do not.
        assert rep["additivity_cos"] > rep["null_additivity_cos"] + 0.4
        assert rep["sae_latent_mcc"] > rep["sae_latent_mcc_chance"] + 0.4
        assert rep["intrusion_accuracy"] > rep["intrusion_chance"] + 0.3
        assert rep["linear_r2"] <= rep["linear_r2_ceiling"] + 0.02
        # spliced into the classifier, either SAE's reconstruction keeps most of its loss
        assert all(0.8 < a["ce_loss_recovered"] < 1.1 for a in rep["sae"].values())
    assert full["linear_r2"] > 0.7 and full["linear_r2_ceiling"] > 0.999
    assert sup["superposition"] and sup["linear_r2_ceiling"] < 0.7
    assert sup["linear_r2"] < full["linear_r2"]
    saved = json.loads((tmp_path / "m6" / "report.json").read_text())
    assert saved["sae_latent_mcc"] == sup["sae_latent_mcc"]


@pytest.mark.slow
def test_seed_agreement_chooses_the_relu_sae_lambda_on_a_network_representation(tmp_path):
    # A real network's representation in superposition (M = 16 neurons, N = 32 latents): the λ
    # whose restarts agree is chosen blind, and the truth, scored afterwards, agrees with it.
    cfg = network_study.IdentifiabilityConfig(latents=32, neurons=16, k=3, classifier_steps=3000,
                                              sae_steps=2000, lams=(0.1, 1.0, 10.0))
    rep = network_study.identifiability(cfg, tmp_path, progress=False)
    sel = rep["lam_selection"]
    assert sel["selected_lam"] == sel["best_lam_in_hindsight"] == 1.0
    assert sel["seed_agreement"][1] > max(sel["seed_agreement"][0], sel["seed_agreement"][2]) + 0.2
    assert sel["latent_mcc"][1] > 0.8 and rep["sae"]["relu"]["latent_mcc"] > 0.8


def test_a_classifier_that_does_not_learn_is_reported_not_scored(tmp_path):
    rep = network_study.identifiability(
        network_study.IdentifiabilityConfig(latents=8, neurons=8, k=2, samples=2048,
                                            test_samples=512, classifier_steps=1),
        tmp_path, progress=False)
    assert rep["status"].startswith("the classifier did not learn")
    assert "linear_r2" not in rep and "sae_latent_mcc" not in rep


@pytest.mark.slow  # test_demo (also slow) checks the same on the demo's digits run
def test_digits_network_sae_scores_and_panels(tmp_path):
    rep = network_study.real_network(
        network_study.RealNetworkConfig(samples=900, neurons=32, latents=64, k=4,
                                        classifier_steps=600, sae_steps=600), tmp_path,
        progress=False)
    assert rep["status"] == "ok" and rep["accuracy"] > 0.85
    assert rep["fvu"] < 0.3 and rep["l0"] == 4.0 and 0 <= rep["dead_fraction"] < 1
    assert rep["intrusion_accuracy"] > rep["intrusion_chance"]
    # (the spliced loss can fall below the clean one: the reconstruction denoises the layer)
    assert rep["spliced_ce"] < 0.5 * rep["ablated_ce"]
    assert rep["ce_loss_recovered"] > 0.7 and rep["spliced_accuracy"] > 0.8
    acts = np.load(tmp_path / "activations.npy")
    assert acts.shape == (900, 32) and np.all(acts >= 0)
    for name in ("feature_density.png", "top_inputs_sae.png", "top_inputs_neurons.png"):
        assert (tmp_path / name).stat().st_size > 5_000


@pytest.mark.parametrize(("argv", "match"), [
    (["classifier-sae", "--dataset", "mnist"], "dataset must be one of"),
    (["classifier-sae", "--samples", "60"], "give 45 training and 15 test samples"),
    (["classifier-sae", "--samples", "5000"], "samples must be >= 1 and <= 1797"),
    (["classifier-sae", "--test-fraction", "1.0"], "test_fraction must lie in"),
    (["identifiability", "--latents", "1"], "latents must be >= 2"),
    (["identifiability", "--neurons", "0"], "neurons must be >= 1"),
    (["identifiability", "--latents", "8", "--k", "9"], "k must be <= latents"),
    (["identifiability", "--lams", "0.1,1", "--restarts", "1"], "restarts must be >= 2"),
    (["identifiability", "--lams", "0.1,-1"], "lams must lie in [0, inf), got -1"),
    (["identifiability", "--classifier-data", "stream"], "classifier_data must be one of"),
    (["identifiability", "--classifier-steps", "0"], "steps must be >= 1"),
])
def test_bad_input_exits_2_with_one_line(argv, match, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
