"""From networks to features: the three-step argument of sparse-recovery.md §6, runnable.

1. ``identifiability``: a classifier trained on a synthetic world with known sparse latents
   represents them linearly when it has enough neurons (M ≥ N), and in superposition when it has
   fewer; additivity holds over disjoint supports.
2. SAEs on the representation lift the latents out of superposition (latent MCC against the truth).
3. The intrusion test scores SAE latents against single neurons and random directions.

``real_network`` does steps 2 and 3 on a real network: a classifier trained on a dataset that
ships inside scikit-learn (default: the 8×8 handwritten digits), with the images as the judge.

When the classifier does not learn (test accuracy within a quarter of the way from chance to the
reference), the report says so and gives no downstream numbers: they would be meaningless.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from superjax import _checks, interpret, metrics, models, networks, report, sae_study, world

DATASETS = ("digits", "iris", "wine", "breast_cancer")
CLASSIFIER_DATA = ("fresh", "fixed")
SAE_ARCHS = ("topk", "relu")


@dataclasses.dataclass(frozen=True)
class IdentifiabilityConfig:
    """One identifiability run (see :mod:`superjax.world` for the world's parameters).

    Attributes:
      latents, neurons, k: N latents, M neurons in the representation, K active latents.
      samples, test_samples: training and held-out set sizes.
      classifier_data: "fresh" trains the classifier on a new batch of the world every step, so
        it descends the population cross-entropy, whose optimum makes the representation an
        affine image of z; "fixed" trains it on the ``samples`` set (the SAEs and the linear
        read-out always use that set). The network memorises a fixed set of 2^15 samples' noisy
        labels: at N = M = 64 its held-out CE ends 0.47 nats above the Bayes CE and linear R²
        at 0.69 (session 25's 4000 steps of batch 256), against 0.02 and 0.99 for fresh batches
        (docs/results.md).
      classifier_steps, classifier_batch, classifier_hidden, classifier_learning_rate: the
        classifier's AdamW training (see :class:`superjax.networks.ClassifierConfig`).
        ``classifier_hidden=None`` gives two ReLU layers of width 2D (D = 2N, the world's
        observation dimension): two ReLU units per generator unit invert its leaky ReLUs exactly,
        u = relu(h) − relu(−h)/slope. At N = 64, width 256 reached R² 0.99 where 128 stopped at
        0.97 (docs/results.md).
      sae_steps: the SAEs' optimisation steps.
      lam: L1 coefficient of the ReLU SAE (on inputs scaled to mean norm √M).
      lams, restarts: when ``lams`` is given, the ReLU SAE's λ is chosen among them without the
        truth: each λ is trained from ``restarts`` initialisations (one compiled run) and the λ
        whose restarts agree most is kept (:func:`superjax.sae_study.select_by_agreement`). The
        report then scores every λ against the true latents, to show how good the blind choice
        was.
      classes, sharpness: the world's label process (see :class:`superjax.world.WorldConfig`).
      seed: world, data, classifier and SAEs.
    """

    latents: int = 64
    neurons: int = 64
    k: int = 4
    samples: int = 32768
    test_samples: int = 4096
    classifier_data: str = "fresh"
    classifier_steps: int = 16000
    classifier_batch: int = 1024
    classifier_hidden: tuple[int, ...] | None = None
    classifier_learning_rate: float = 3e-3
    sae_steps: int = 3000
    lam: float = 0.1
    lams: tuple[float, ...] = ()
    restarts: int = 3
    classes: int | None = None
    sharpness: float = 3.0
    seed: int = 0

    def __post_init__(self):
        _ = self.world  # validates latents, k, classes and sharpness
        _checks.positive_int("neurons", self.neurons, maximum=world.MAX_LATENTS)
        _checks.positive_int("samples", self.samples, minimum=1024)
        _checks.positive_int("test_samples", self.test_samples, minimum=256)
        _checks.one_of("classifier_data", self.classifier_data, CLASSIFIER_DATA)
        _ = self.classifier  # validates the classifier's settings
        _checks.positive_int("sae_steps", self.sae_steps)
        _checks.real_number("lam", self.lam, minimum=0.0)
        object.__setattr__(self, "lams", tuple(_checks.real_number("lams", v, minimum=0.0)
                                               for v in self.lams))
        _checks.positive_int("restarts", self.restarts, minimum=2 if self.lams else 1)
        _checks.positive_int("seed", self.seed, minimum=0)

    @property
    def world(self) -> world.WorldConfig:
        return world.WorldConfig(latents=self.latents, k=self.k, classes=self.classes,
                                 sharpness=self.sharpness, seed=self.seed)

    @property
    def classifier(self) -> networks.ClassifierConfig:
        d = self.world.d
        return networks.ClassifierConfig(
            d_in=d, classes=self.world.c, neurons=self.neurons,
            hidden=self.classifier_hidden or (2 * d, 2 * d),
            steps=self.classifier_steps, batch_size=self.classifier_batch,
            learning_rate=self.classifier_learning_rate, seed=self.seed)


def classifier_status(accuracy: float, chance: float, reference: float) -> tuple[bool, str]:
    """Whether the classifier learned: accuracy at least a quarter of the way from chance."""
    threshold = chance + 0.25 * (reference - chance)
    if accuracy >= threshold:
        return True, "ok"
    return False, (f"the classifier did not learn: test accuracy {accuracy:.3f} against chance "
                   f"{chance:.3f} (needs {threshold:.3f}); the representation carries no "
                   "learned structure, so no downstream metric is reported. Train longer, "
                   "change the learning rate, or use more samples.")


def _scaling(train_rows) -> tuple[Array, Array]:
    """The training mean and the scale that gives the centred rows mean norm √M (the SAE input
    convention): standardised = (y − mean) · scale."""
    mean = train_rows.mean(0)
    return mean, jnp.sqrt(train_rows.shape[1]) / jnp.mean(jnp.linalg.norm(train_rows - mean,
                                                                            axis=1))




def _train_saes(y_train, *, latents: int, k: int, lam: float, steps: int, seed: int,
                out: pathlib.Path, progress: bool, lams: tuple[float, ...] = (),
                restarts: int = 1) -> tuple[dict[str, models.SparseAutoencoder], list, dict]:
    """A TopK and a ReLU SAE on ``y_train``. With ``lams``, the ReLU SAE's λ is chosen by seed
    agreement; then also returns every (λ, restart) SAE and the selection."""
    fit = sae_study.fit_schedule(steps, lam=lam, learning_rate=3e-3)
    saes, sweep, selection = {}, [], {}
    for i, arch in enumerate(SAE_ARCHS):
        sae = models.SAEConfig(d_in=y_train.shape[1], d_sae=latents, activation=arch,
                               k=min(k, latents) if arch == "topk" else 0)
        choose = arch == "relu" and bool(lams)
        grid = {"lams": [v for v in lams for _ in range(restarts)],
                "seeds": [seed + r for _ in lams for r in range(restarts)]} if choose else {}
        saes[arch], _ = sae_study.fit_rows(
            sae, y_train, fit, out / f"sae_{arch}", seed=seed,
            order_key=jax.random.fold_in(jax.random.key(seed), 100 + i),
            batch_size=min(1024, y_train.shape[0]), progress=progress, **grid)
        if choose:
            sweep = saes[arch]
            selection = sae_study.select_by_agreement(lams, restarts, [m.dictionary for m in sweep])
            saes[arch] = sweep[lams.index(selection["selected_lam"]) * restarts]
    return saes, sweep, selection


def _intrusion_scores(key, codes, y, judge, k: int = 5, window: int = 1
                      ) -> dict[str, float | None]:
    """Intrusion accuracy of SAE latents, single neurons and random directions of y."""
    k_dirs, k_a, k_b, k_c = jax.random.split(key, 4)
    window = max(1, min(window, codes.shape[0] // (2 * k)))
    directions = jax.random.normal(k_dirs, (y.shape[1], codes.shape[1]))
    scores = {"intrusion_accuracy": interpret.intrusion(k_a, codes, judge, k, window),
              "neuron_intrusion_accuracy": interpret.intrusion(k_b, y, judge, k, window),
              "random_intrusion_accuracy": interpret.intrusion(k_c, y @ directions, judge, k,
                                                               window)}
    out = {name: _float(r.accuracy) for name, r in scores.items()}
    out["intrusion_chance"] = 1.0 / (k + 1)
    out["intrusion_units_scored"] = int(scores["intrusion_accuracy"].valid.sum())
    return out


def _float(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def identifiability(config: IdentifiabilityConfig, out: str | pathlib.Path, *,
                    progress: bool = True) -> dict[str, Any]:
    """Trains the classifier on the synthetic world and writes DIR/report.json."""
    from superjax import bounds

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    wcfg = config.world
    w = world.make_world(wcfg)
    k_train, k_test, k_pairs, k_eval = jax.random.split(jax.random.key(config.seed + 1), 4)
    tr = world.sample(k_train, w, wcfg, config.samples)
    te = world.sample(k_test, w, wcfg, config.test_samples)
    ccfg = config.classifier
    if config.classifier_data == "fresh":
        def fresh(key, size):
            batch = world.sample(key, w, wcfg, size)
            return batch.x, batch.labels

        net = networks.train_online(ccfg, fresh, progress=progress).model
    else:
        net = networks.train(ccfg, tr.x, tr.labels, progress=progress).model
    test_out = networks.apply(net, te.x)
    acc = networks.accuracy(test_out.logits, te.labels)
    bayes = networks.accuracy(te.logits, te.labels)
    chance = float(jnp.max(jnp.bincount(te.labels, length=wcfg.c)) / te.labels.shape[0])
    ok, status = classifier_status(acc, chance, bayes)
    rep: dict[str, Any] = {
        "config": dataclasses.asdict(config), "world": dataclasses.asdict(wcfg),
        "ambient": wcfg.d, "classes": wcfg.c, "status": status, "accuracy": acc,
        "bayes_accuracy": bayes, "chance_accuracy": chance,
        # how close the classifier came to the cross-entropy optimum, identifiability's premise
        "test_ce": float(metrics.cross_entropy(test_out.logits, te.labels)),
        "bayes_ce": float(metrics.cross_entropy(te.logits, te.labels)),
        "superposition": config.neurons < config.latents,
    }
    if config.neurons <= config.latents:
        b = bounds.recovery_bounds(config.neurons, config.latents, config.k, False)
        rep["l1_recoverable"] = bool(b.recoverable)
        rep["rho_over_rho_weak"] = float(b.rho / b.rho_weak)
    if ok:
        y_all = networks.apply(net, tr.x).representation
        y_train, y_test = y_all[:16384], test_out.representation
        y0 = networks.apply(net, world.generate(w, jnp.zeros((1, wcfg.latents)))).representation
        z_a, z_b = world.disjoint_pairs(k_pairs, wcfg, 1024)
        reps = [networks.apply(net, world.generate(w, zz)).representation
                for zz in (z_a, z_b, z_a + z_b)]
        add = interpret.additivity(y0[0], *reps)
        rep.update({
            "linear_r2": float(interpret.linear_r2(y_train, tr.z[:16384], y_test, te.z)),
            "linear_r2_ceiling": float(interpret.linear_r2_ceiling(te.z, config.neurons)),
            "additivity_cos": float(add.cos), "additivity_residual": float(add.residual),
            "null_additivity_cos": float(add.null_cos),
            "null_additivity_residual": float(add.null_residual),
            "neuron_latent_mcc": float(metrics.latent_mcc(te.z, y_test)),
        })
        mean, scale = _scaling(y_all)
        y_train_s, y_test_s = (y_all - mean) * scale, (y_test - mean) * scale
        saes, sweep, selection = _train_saes(
            y_train_s, latents=config.latents, k=config.k, lam=config.lam,
            steps=config.sae_steps, seed=config.seed, out=out, progress=progress,
            lams=config.lams, restarts=config.restarts)
        if selection:
            # Scored against the truth only now, after the choice.
            mcc = [float(metrics.latent_mcc(te.z, m(y_test_s).codes)) for m in sweep]
            r = config.restarts
            per_lam = [float(np.mean(mcc[i * r:(i + 1) * r])) for i in range(len(config.lams))]
            rep["lam_selection"] = {
                **selection, "latent_mcc": per_lam,
                "best_lam_in_hindsight": config.lams[int(np.argmax(per_lam))]}
        per_arch = {}
        for arch, sae in saes.items():
            o = sae(y_test_s)
            spliced = metrics.splice_scores(net.head, y_test, o.reconstruction / scale + mean,
                                            mean, te.labels)
            per_arch[arch] = {"latent_mcc": float(metrics.latent_mcc(te.z, o.codes)),
                              "fvu": float(metrics.fvu(y_test_s, o.reconstruction)),
                              "l0": float(metrics.l0(o.codes)),
                              "dead_fraction": float(metrics.dead_fraction(o.codes)),
                              "spliced_accuracy": float(spliced.spliced_accuracy),
                              "ce_loss_recovered": float(spliced.ce_loss_recovered)}
        best = max(per_arch, key=lambda a: per_arch[a]["latent_mcc"])
        codes = saes[best](y_test_s).codes
        rep.update({
            "sae": per_arch, "sae_best": best,
            "sae_latent_mcc": per_arch[best]["latent_mcc"],
            "sae_latent_mcc_chance": float(metrics.latent_mcc_chance(k_eval, te.z, codes)),
            **_intrusion_scores(k_eval, codes, y_test_s, te.z, window=4),
        })
    rep.update({"seconds": time.perf_counter() - start, "environment": report.environment()})
    report.write_json(out / "report.json", rep)
    return rep


# ---------------------------------------------------------------------------------------------
# A real network on a bundled dataset.


class Dataset:
    """Inputs standardised per feature, integer labels, and the images when there are some."""

    def __init__(self, name: str, samples: int | None = None, seed: int = 0):
        from sklearn import datasets

        _checks.one_of("dataset", name, DATASETS)
        bunch = getattr(datasets, f"load_{name}")()
        x = np.asarray(bunch.data, np.float32)
        labels = np.asarray(bunch.target, np.int32)
        images = np.asarray(bunch.images, np.float32) if name == "digits" else None
        if samples is not None:
            _checks.positive_int("samples", samples, maximum=x.shape[0])
            keep = np.sort(np.random.default_rng(seed).permutation(x.shape[0])[:samples])
            x, labels = x[keep], labels[keep]
            images = images[keep] if images is not None else None
        self.name, self.x, self.labels, self.images = name, x, labels, images
        self.classes = int(bunch.target.max()) + 1


@dataclasses.dataclass(frozen=True)
class RealNetworkConfig:
    """One real-network run.

    Attributes:
      dataset: one of ``DATASETS`` (scikit-learn's bundled data; no download).
      samples: use this many samples (default all); test_fraction of them are held out.
      neurons: width M of the ReLU hidden layer whose activations the SAE reads.
      latents, k: SAE width and TopK k.
      k_aux: AuxK against dead latents (default M/2, as Gao et al.; 0 turns it off).
      classifier_steps, sae_steps: optimisation steps. seed: split, networks, SAE.
    """

    dataset: str = "digits"
    samples: int | None = None
    test_fraction: float = 0.25
    neurons: int = 64
    latents: int = 128
    k: int = 4
    k_aux: int | None = None
    classifier_steps: int = 2000
    sae_steps: int = 3000
    seed: int = 0

    def __post_init__(self):
        _checks.one_of("dataset", self.dataset, DATASETS)
        _checks.real_number("test_fraction", self.test_fraction, minimum=0.0, maximum=1.0,
                            strict_min=True, strict_max=True)
        _checks.positive_int("neurons", self.neurons, maximum=world.MAX_LATENTS)
        _checks.positive_int("latents", self.latents, maximum=64 * world.MAX_LATENTS)
        _checks.sparsity(self.k, self.latents, n_name="latents")
        if self.k_aux is not None:
            _checks.positive_int("k_aux", self.k_aux, minimum=0, maximum=self.latents)
        _checks.positive_int("classifier_steps", self.classifier_steps)
        _checks.positive_int("sae_steps", self.sae_steps)
        _checks.positive_int("seed", self.seed, minimum=0)

    @property
    def aux(self) -> int:
        return self.k_aux if self.k_aux is not None else min(self.neurons // 2, self.latents)


def split(n: int, test_fraction: float, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices; raises a clear error when either side is too small to be useful."""
    test = int(round(n * test_fraction))
    train_rows = n - test
    need_train, need_test = max(50, 5 * classes), max(30, 3 * classes)
    if train_rows < need_train or test < need_test:
        raise ValueError(f"{n} samples with test_fraction {test_fraction:g} give {train_rows} "
                         f"training and {test} test samples; this study needs at least "
                         f"{need_train} and {need_test} ({classes} classes). Use more samples or "
                         "another test fraction.")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[test:]), np.sort(perm[:test])


def real_network(config: RealNetworkConfig, out: str | pathlib.Path, *,
                 progress: bool = True) -> dict[str, Any]:
    """Classifier → hidden activations → TopK SAE → FVU, L0, the network's test loss and
    accuracy with the SAE's reconstruction spliced in for the hidden layer
    (:func:`superjax.metrics.splice_scores`), intrusion, purity, figures.

    Writes DIR/report.json, DIR/activations.npy (every sample's hidden activations, training rows
    first, for ``superjax train-sae --activations``), DIR/labels.npy, DIR/feature_density.png and,
    for image data, DIR/top_inputs_sae.png and DIR/top_inputs_neurons.png.
    """
    from superjax import plots

    out = pathlib.Path(out)
    start = time.perf_counter()
    ds = Dataset(config.dataset, config.samples, config.seed)
    train_idx, test_idx = split(ds.x.shape[0], config.test_fraction, ds.classes, config.seed)
    mu, sd = ds.x[train_idx].mean(0), ds.x[train_idx].std(0)
    x = jnp.asarray((ds.x - mu) / np.where(sd > 0, sd, 1.0))
    labels = jnp.asarray(ds.labels)
    out.mkdir(parents=True, exist_ok=True)
    ccfg = networks.ClassifierConfig(d_in=x.shape[1], classes=ds.classes, neurons=config.neurons,
                                     hidden=(128,), representation="relu",
                                     steps=config.classifier_steps, batch_size=128,
                                     weight_decay=1e-3, seed=config.seed)
    net = networks.train(ccfg, x[train_idx], labels[train_idx], progress=progress).model
    full = networks.apply(net, x)
    acc = networks.accuracy(full.logits[test_idx], labels[test_idx])
    chance = float(np.bincount(ds.labels[test_idx]).max() / len(test_idx))
    ok, status = classifier_status(acc, chance, 1.0)
    rep: dict[str, Any] = {"config": dataclasses.asdict(config), "status": status,
                           "accuracy": acc, "chance_accuracy": chance,
                           "train_samples": len(train_idx), "test_samples": len(test_idx)}
    if ok:
        acts = np.asarray(full.representation)
        np.save(out / "activations.npy", np.concatenate([acts[train_idx], acts[test_idx]]))
        np.save(out / "labels.npy", np.concatenate([ds.labels[train_idx], ds.labels[test_idx]]))
        mean, scale = _scaling(full.representation[train_idx])
        y_train, y_test = ((full.representation[i] - mean) * scale for i in (train_idx, test_idx))
        fit = sae_study.fit_schedule(config.sae_steps, learning_rate=3e-3, k_aux=config.aux,
                                     dead_window=8192)
        sae_cfg = models.SAEConfig(d_in=config.neurons, d_sae=config.latents, activation="topk",
                                   k=config.k)
        sae, _ = sae_study.fit_rows(sae_cfg, y_train, fit, out / "sae", seed=config.seed,
                                    order_key=jax.random.key(config.seed + 7),
                                    batch_size=min(256, y_train.shape[0]), progress=progress)
        o = sae(y_test)
        judge = x[test_idx]  # the inputs (pixels), standardised
        key = jax.random.key(config.seed + 11)
        directions = jax.random.normal(key, (config.neurons, config.latents))
        units = {"sae": o.codes, "neurons": y_test, "random": y_test @ directions}
        test_labels = labels[test_idx]
        purity = {name: interpret.label_purity(a, test_labels, ds.classes, k=10)
                  for name, a in units.items()}
        density = {name: interpret.feature_density(a) for name, a in units.items()
                   if name != "random"}
        alive = density["sae"] > 0
        spliced = metrics.splice_scores(net.head, full.representation[test_idx],
                                        o.reconstruction / scale + mean, mean, test_labels)
        rep.update({
            "fvu": float(metrics.fvu(y_test, o.reconstruction)),
            **{name: float(v) for name, v in spliced._asdict().items()},
            "l0": float(metrics.l0(o.codes)),
            "dead_fraction": float(metrics.dead_fraction(o.codes)),
            "neuron_dead_fraction": float(metrics.dead_fraction(y_test)),
            **_intrusion_scores(key, o.codes, y_test, judge, window=4),
            "label_purity": float(jnp.mean(purity["sae"][alive])) if alive.any() else None,
            "neuron_label_purity": float(jnp.mean(purity["neurons"])),
            "random_label_purity": float(jnp.mean(purity["random"])),
            "purity_chance": chance,
        })
        plots.feature_density({"SAE latents": density["sae"], "neurons": density["neurons"]},
                              out / "feature_density.png")
        if ds.images is not None:
            images = ds.images[test_idx]
            chosen = np.flatnonzero(np.asarray(alive))
            chosen = np.random.default_rng(config.seed).permutation(chosen)[:12]
            plots.top_inputs(images, np.asarray(o.codes), chosen, out / "top_inputs_sae.png",
                             "SAE latents (random alive ones): top-activating test digits")
            plots.top_inputs(images, np.asarray(y_test), np.arange(min(12, config.neurons)),
                             out / "top_inputs_neurons.png",
                             "single neurons: top-activating test digits")
    rep.update({"seconds": time.perf_counter() - start, "environment": report.environment()})
    report.write_json(out / "report.json", rep)
    return rep
