"""Train an SAE on synthetic superposition data and score it against the ground truth.

The data are the canonical problem of sparse-recovery.md §5: a fixed training set of ``samples``
activations y = A z (K of N features active, non-negative by default), batches drawn from it by
step (so runs resume exactly), and a separate held-out test set for every reported number.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superjax import _checks, checkpoint, data, metrics, models, report, train

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "mlp", "lista", "sparse-coding")
SWEEP_ARCHS = ("relu", "jumprelu", "mlp", "lista")  # λ is an argument of their train step


@dataclasses.dataclass(frozen=True)
class TrainSAEConfig:
    """One SAE run on synthetic data.

    Attributes:
      m, n, k: neurons M, true features N, active features K.
      arch: one of ``ARCHS``: an activation of the one-layer encoder (relu, topk, batchtopk,
        jumprelu), a deeper encoder with ReLU latents (mlp, lista), or "sparse-coding":
        dictionary learning with per-sample FISTA codes at the same objective (no encoder).
      latents: SAE width (default N).
      sae_k: k of TopK / BatchTopK (default K).
      known_dictionary: fix the decoder at the true dictionary and train the encoder only.
      samples: training-set size; test_samples: held-out set size.
      steps, batch_size, lam, learning_rate: optimisation. λ is the L1 (ReLU) or L0 (JumpReLU)
        coefficient; 0.1 is a starting point at unit-scale codes, not a tuned value.
      signed: signed codes (default non-negative, the usual SAE setting).
      seed: seed of data, initialisation and batch order.
      activations: a .npy/.safetensors file of real activations (samples, M) to train on instead
        of synthetic data; N is then the SAE width and K the TopK k. The last ``test_samples``
        rows (at most 10 %) are held out for evaluation.
      k_aux: AuxK against dead latents (see :class:`superjax.train.FitConfig`); 0 turns it off.
      topk_kernel: "auto", "dense" or "gather" for arch topk (see
        :class:`superjax.models.SAEConfig`): the same training, faster on CPU with "gather",
        which "auto" picks there.
      lams: a λ sweep: one SAE per value (replacing ``lam``), trained in one compiled step on the
        same batches (:func:`superjax.train.fit`); for relu, jumprelu, mlp and lista.
      sae_ks: a k sweep for topk and batchtopk, the same way (replacing ``sae_k``).
      restarts: SAEs per λ (or k), from initialisation seeds seed, seed + 1, ... (same data and
        batches). With two or more, the report scores each λ (k) by the restarts' agreement
        (:func:`superjax.metrics.seed_agreement`) and selects the one where they agree most, a
        choice that needs no ground truth.
    """

    m: int
    n: int
    k: int
    arch: str = "relu"
    latents: int | None = None
    sae_k: int | None = None
    known_dictionary: bool = False
    samples: int = 16384
    test_samples: int = 4096
    steps: int = 3000
    batch_size: int = 1024
    lam: float = 0.1
    learning_rate: float = 3e-3
    signed: bool = False
    seed: int = 0
    activations: str | None = None
    k_aux: int = 0
    topk_kernel: str = "auto"
    lams: tuple[float, ...] = ()
    restarts: int = 1
    sae_ks: tuple[int, ...] = ()

    def __post_init__(self):
        data.DataConfig(m=self.m, n=self.n, k=self.k)  # validates m, n, k
        _checks.one_of("arch", self.arch, ARCHS)
        width = self.latents if self.latents is not None else self.n
        _checks.positive_int("latents", width)
        if self.known_dictionary and width != self.n:
            raise ValueError(f"--known-dictionary needs latents = n = {self.n}, got {width}")
        if self.sae_k is not None:
            _checks.positive_int("sae_k", self.sae_k, maximum=width)
        _checks.positive_int("samples", self.samples)
        _checks.positive_int("test_samples", self.test_samples, minimum=2)
        _checks.positive_int("steps", self.steps)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.real_number("lam", self.lam, minimum=0.0)
        _checks.real_number("learning_rate", self.learning_rate, minimum=0.0, strict_min=True)
        _checks.positive_int("seed", self.seed, minimum=0)
        _checks.positive_int("k_aux", self.k_aux, minimum=0, maximum=width)
        _checks.one_of("topk_kernel", self.topk_kernel, models.TOPK_KERNELS)
        object.__setattr__(self, "lams", tuple(_checks.real_number("lams", v, minimum=0.0)
                                               for v in self.lams))
        if self.lams and self.arch not in SWEEP_ARCHS:
            raise ValueError(f"--lams sweeps the L1/L0 coefficient of {', '.join(SWEEP_ARCHS)}; "
                             f"{self.arch!r} has none that one compiled step can vary (TopK: "
                             f"--sae-ks; sparse coding: --lam per run)")
        object.__setattr__(self, "sae_ks", tuple(_checks.positive_int("sae_ks", v, maximum=width)
                                                 for v in self.sae_ks))
        if self.sae_ks and self.arch not in models.K_ACTIVATIONS:
            raise ValueError(f"--sae-ks sweeps the k of {' and '.join(models.K_ACTIVATIONS)}, not "
                             f"{self.arch!r} (λ: --lams)")
        if self.sae_ks and self.sae_k is not None:
            raise ValueError("give one k (--sae-k) or a sweep of them (--sae-ks), not both")
        _checks.positive_int("restarts", self.restarts)
        if self.restarts > 1 and self.arch == "sparse-coding":
            raise ValueError("--restarts trains SAEs side by side in one compiled step; "
                             "sparse coding runs one dictionary per run")
        if self.topk_kernel == "gather" and self.arch != "topk":
            raise ValueError(f"--topk-kernel {self.topk_kernel} is for --arch topk, got "
                             f"{self.arch!r}")
        if self.activations is not None:
            if self.known_dictionary:
                raise ValueError("--known-dictionary needs synthetic data (no true dictionary "
                                 "exists for an activation file)")
            if self.arch in ("mlp", "lista", "sparse-coding"):
                raise ValueError("--activations trains one-layer encoders (relu, topk, batchtopk, "
                                 f"jumprelu), whose input scale folds into the weights; got "
                                 f"{self.arch!r}")

    @property
    def swept(self) -> str:
        """What a sweep of this run varies: "k" for TopK and BatchTopK, else "lam"."""
        return "k" if self.arch in models.K_ACTIVATIONS else "lam"

    @property
    def members(self) -> list[tuple[float, int]] | None:
        """(λ or k, initialisation seed) of every SAE of a sweep, value-major (:attr:`swept`);
        None for a single SAE."""
        if not (self.lams or self.sae_ks) and self.restarts == 1:
            return None
        values = (self.sae_ks or (self.sae.k,)) if self.swept == "k" else self.lams or (self.lam,)
        return [(v, self.seed + r) for v in values for r in range(self.restarts)]

    def fit_sweep(self) -> dict[str, Any]:
        """The ``lams`` (or ``ks``) and ``seeds`` arguments of :func:`superjax.train.fit`."""
        if self.members is None:
            return {}
        return {self.swept + "s": [v for v, _ in self.members],
                "seeds": [s for _, s in self.members]}

    @property
    def sae(self) -> models.SAEConfig:
        width = self.latents if self.latents is not None else self.n
        # A k sweep trains under the largest k, the static bound of every member's selection.
        k = (max(self.sae_ks) if self.sae_ks else self.sae_k if self.sae_k is not None
             else min(self.k, width))
        # "mlp" and "lista" are encoders; their latents are ReLU codes trained with L1.
        # "sparse-coding" codes minimise the same objective per sample: the SAE loss is
        # 2·(½‖x − x̂‖² + (λ/2)‖z‖₁) for unit atoms, so FISTA runs at λ/2.
        encoder = {"mlp": "mlp", "lista": "lista", "sparse-coding": "fista"}.get(self.arch,
                                                                                "linear")
        activation = "relu" if encoder != "linear" else self.arch
        return models.SAEConfig(d_in=self.m, d_sae=width, activation=activation,
                                k=k if activation in models.K_ACTIVATIONS else 0,
                                encoder=encoder, fista_lam=self.lam / 2,
                                topk_kernel=self.topk_kernel)


def _train(config: TrainSAEConfig, out: pathlib.Path, progress: bool, mesh=None):
    """Data, training (or resume) and the trained models (one per λ of a sweep, else one);
    shared by :func:`run` and the gap study."""
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "config.json", dataclasses.asdict(config))
    dcfg = data.DataConfig(m=config.m, n=config.n, k=config.k, signed=config.signed)
    k_dict, k_train, k_test, k_order, k_eval = jax.random.split(jax.random.key(config.seed), 5)
    truth = data.make_dictionary(k_dict, dcfg)
    train_set = data.sample_batch(k_train, truth, dcfg, config.samples).y
    trained, result = fit_rows(config.sae, train_set, _fit_config(config), out,
                               seed=config.seed, order_key=k_order, batch_size=config.batch_size,
                               init_decoder=truth.T if config.known_dictionary else None,
                               progress=progress, mesh=mesh, **config.fit_sweep())
    test = data.sample_batch(k_test, truth, dcfg, config.test_samples)
    return trained if config.members else [trained], truth, test, k_eval, result


@functools.partial(jax.jit, static_argnames="batch_size")
def _rows_at(rows, order_key, step, *, batch_size: int):
    """The batch of ``step``: ``batch_size`` rows drawn with replacement by fold_in(key, step)."""
    idx = jax.random.randint(jax.random.fold_in(order_key, step), (batch_size,), 0, rows.shape[0])
    return rows[idx]


def fit_rows(sae: models.SAEConfig, rows, fit_config: train.FitConfig,
             out: pathlib.Path | None = None, *, seed: int, order_key, batch_size: int,
             init_decoder=None, progress: bool = True, mesh=None, lams=None, seeds=None,
             ks=None):
    """Trains an SAE on an in-memory array; the batch of step s is drawn from fold_in(key, s).
    ``mesh``, ``lams``, ``seeds``, ``ks``: see :func:`superjax.train.fit`. Returns (model,
    FitResult), or (a list with one model per SAE, FitResult) for a sweep."""
    batches_at = functools.partial(_rows_at, jnp.asarray(rows), order_key, batch_size=batch_size)
    result = train.fit(sae, batches_at, fit_config, out, seed=seed, init_decoder=init_decoder,
                       progress=progress, mesh=mesh, lams=lams, seeds=seeds, ks=ks)
    trained = unstack(sae, result.params, result.sweep)
    return (trained if result.sweep is not None else trained[0]), result


def unstack(sae: models.SAEConfig, params, sweep: dict[str, list] | None = None
            ) -> list[models.SparseAutoencoder]:
    """Models from trained parameters: one, or one per SAE of a sweep's stacked parameters
    (``sweep``: :attr:`superjax.train.FitResult.sweep`), each with its own k."""
    if sweep is None:
        graphdef, _ = nnx.split(models.SparseAutoencoder(sae, rngs=nnx.Rngs(0)))
        return [nnx.merge(graphdef, params)]
    ks = sweep.get("ks", [sae.k] * len(sweep["seeds"]))
    return [unstack(dataclasses.replace(sae, k=k), jax.tree.map(lambda x, i=i: x[i], params))[0]
            for i, k in enumerate(ks)]


def _member(config: TrainSAEConfig, result: train.FitResult, i: int) -> dict[str, Any]:
    """λ (or k), seed and final training loss of SAE ``i`` (of a sweep, or the only one)."""
    last = result.history[-1]["loss"] if result.history else None
    if not config.members:
        return {"lam": config.lam, "seed": config.seed, "final_train_loss": last}
    value, seed = config.members[i]
    return {config.swept: value, "seed": seed,
            "final_train_loss": None if last is None else last[i]}


def _export(model: models.SparseAutoencoder, config: TrainSAEConfig, out: pathlib.Path,
            member: dict[str, Any], source: str) -> None:
    """The SAELens folder of one SAE: DIR/saelens/, or DIR/saelens/lam{λ}[_seed{s}]/ (TopK:
    k{k}[_seed{s}]/) for each SAE of a sweep, its cfg.json carrying the run's settings with this
    SAE's λ (k) and seed."""
    from superjax import export

    folder, name = out / "saelens", config.swept
    if config.members:
        restart = f"_seed{member['seed']}" if config.restarts > 1 else ""
        folder = folder / f"{name}{member[name]:g}{restart}"
    own = {"lam": member["lam"]} if "lam" in member else {"sae_k": member["k"], "sae_ks": ()}
    export.export_saelens(model, folder, source=source,
                          **{**dataclasses.asdict(config), **own, "seed": member["seed"]})


NEIGHBOUR_COS = 0.95  # |cos| at which a neighbouring value of a sweep finds an atom again
CONFIRM_SHARE = 0.5  # an atom counts when more than this share of a neighbour's restarts find it


def select_by_agreement(values, restarts: int, dictionaries, name: str = "lam",
                        fvu: list[float] | None = None) -> dict[str, Any]:
    """Per value of a sweep (λ, or ``name`` "k"), the agreement of its ``restarts`` dictionaries
    (value-major order, as :attr:`TrainSAEConfig.members`; :func:`superjax.metrics.seed_agreement`),
    and the value where it is highest. No ground truth is used.

    With ``fvu`` (each SAE's held-out fraction of variance unexplained, same order) the score is
    agreement × (1 − mean FVU of the restarts): the variance explained by a reproducible
    dictionary. TopK's k needs it: its restarts agree most at k = 1, where TopK is a vector
    quantiser whose cluster-centre atoms are stable but leave K − 1 of K components per sample
    unexplained (docs/results.md, dictionary recovery).

    That choice aims at the codes (latent MCC). A second choice aims at the atoms:
    ``selected_{name}_atoms`` is the value whose restarts reproduce the most atoms at
    |cos| ≥ 0.99 (``reproducible_rate``, :func:`superjax.metrics.reproducible_rate`; ties go to
    the higher score). For k an atom counts only where most restarts of the next smaller or
    larger k also find it at |cos| ≥ 0.95 (``confirmed_rate``): an atom of the data survives a
    small change of k, and TopK's k = 1 quantiser reproduces cluster centres that no k ≥ 2 finds
    when K is large. λ has no such failure, and there the test only lost recovery (docs/results.md,
    dictionary recovery), so for λ ``confirmed_rate`` is reported but not used.
    ``neighbour_rate`` summarises the test per value (the share of its atoms that the better
    neighbour's restarts find, :func:`superjax.metrics.shared_rate`). A sweep of one value has
    no neighbour to ask, and every reproduced atom counts.
    """
    r, n = restarts, len(values)
    if r < 2:
        raise ValueError(f"selection by agreement needs at least two restarts, got {r}")
    if len(dictionaries) != n * r:
        raise ValueError(f"expected {n} values × {r} restarts = {n * r} dictionaries, got "
                         f"{len(dictionaries)}")
    members = [range(i * r, (i + 1) * r) for i in range(n)]
    order = sorted(range(n), key=lambda i: values[i])
    neighbours = [[order[p] for p in (order.index(i) - 1, order.index(i) + 1) if 0 <= p < n]
                  for i in range(n)]
    # Each atom's Hungarian-matched |cos| in the other restarts of its value and in those of
    # the neighbouring values. One sweep's dictionaries share their width, so one matching
    # per pair serves both sides.
    cos = {}
    pairs = [p for g in members for p in itertools.combinations(g, 2)]
    pairs += [(x, y) for a, b in itertools.pairwise(order) for x in members[a] for y in members[b]]
    for x, y in pairs:
        cos[x, y], cos[y, x] = (np.asarray(c) for c in metrics.matched_both(
            metrics.abs_cosine(dictionaries[x], dictionaries[y])))

    def found(group, others, threshold):  # [restart, atom]: the share of ``others`` finding it
        return np.array([np.mean([cos[x, y] >= threshold for y in others if y != x], axis=0)
                         for x in group])

    agreement = [float(np.mean([cos[p] for p in itertools.combinations(g, 2)])) for g in members]
    reproduced = [found(g, g, metrics.REPRODUCED_COS) for g in members]
    near = [[found(members[i], members[j], NEIGHBOUR_COS) for j in neighbours[i]]
            for i in range(n)]
    confirmed = [float(np.mean(rep * (np.max(f, axis=0) > CONFIRM_SHARE))) if f else
                 float(np.mean(rep)) for rep, f in zip(reproduced, near, strict=True)]
    label = "λ" if name == "lam" else name
    rule = (f"the {label} whose restarts agree most (Hungarian-matched mean |cos| between their "
            "dictionaries)")
    out = {"restarts": r, f"{name}s": list(values), "seed_agreement": agreement,
           "reproducible_rate": [float(np.mean(rep)) for rep in reproduced],
           "neighbour_rate": [max((float(np.mean(f)) for f in fs), default=1.0) for fs in near],
           "confirmed_rate": confirmed}
    score = agreement
    if fvu is not None:
        explained = [1.0 - float(np.mean(fvu[i * r:(i + 1) * r])) for i in range(n)]
        score = [a * e for a, e in zip(agreement, explained, strict=True)]
        rule += ", weighted by the variance they explain: agreement × (1 − FVU)"
        out.update(explained_variance=explained, score=score)
    best = max(range(n), key=lambda i: score[i])
    counted = confirmed if name == "k" else out["reproducible_rate"]
    atoms = max(range(n), key=lambda i: (counted[i], score[i]))
    atoms_rule = (f"the {label} whose restarts reproduce the most atoms at "
                  f"|cos| ≥ {metrics.REPRODUCED_COS}")
    if name == "k":
        atoms_rule += (f", counting those that most restarts of a neighbouring k find at "
                       f"|cos| ≥ {NEIGHBOUR_COS}")
    return {"rule": rule, **out, f"selected_{name}": values[best], "atoms_rule": atoms_rule,
            f"selected_{name}_atoms": values[atoms]}


def selection(config: TrainSAEConfig, trained: list[models.SparseAutoencoder],
              members: list[dict[str, Any]]) -> dict[str, Any]:
    """{"lam_selection" (or "k_selection"): :func:`select_by_agreement` over a run's restarts,
    with the members' held-out FVU for k}; {} with fewer than two restarts."""
    if config.restarts < 2:
        return {}
    values = list(dict.fromkeys(v for v, _ in config.members))
    fvu = [m["fvu"] for m in members] if config.swept == "k" else None
    return {f"{config.swept}_selection": select_by_agreement(
        values, config.restarts, [m.dictionary for m in trained], config.swept, fvu)}


def reselect(config: TrainSAEConfig, out: str | pathlib.Path) -> dict[str, Any]:
    """A finished sweep's DIR/report.json with its λ (k) selection computed again from the final
    checkpoint by this version's rules; the members' scores stand, nothing is retrained."""
    out = pathlib.Path(out)
    rep = json.loads((out / "report.json").read_text())
    if not config.members or config.restarts < 2:
        raise ValueError(f"{out} is not a sweep with restarts: there is no selection to redo")
    ckpt = checkpoint.Checkpointer(out / "checkpoints")
    step = ckpt.latest_step()
    ckpt.close()
    if step != config.steps:
        raise ValueError(f"{out}: the last checkpoint is at step {step}, not at the run's final "
                         f"step {config.steps}; run it to the end first")
    trained = _train(config, out, progress=False)[0]
    rep.update(selection(config, trained, rep["sweep"]))
    report.write_json(out / "report.json", rep)
    return rep


def run(config: TrainSAEConfig, out: str | pathlib.Path, *, progress: bool = True, mesh=None
        ) -> dict[str, Any]:
    """Trains (or resumes) the SAE, evaluates it on held-out data, writes DIR/report.json.

    One-layer ReLU, TopK and JumpReLU SAEs are also written as a SAELens folder, DIR/saelens/.
    Training is data-parallel over ``mesh`` (see :func:`superjax.train.fit`; default every
    device); over several processes, process 0 writes the files.
    """
    out = pathlib.Path(out)
    if config.activations is not None:
        return run_activations(config, out, progress=progress, mesh=mesh)

    start = time.perf_counter()
    trained, truth, test, k_eval, result = _train(config, out, progress, mesh)
    members = []
    for i, model in enumerate(trained):
        member = _member(config, result, i)
        if model.config.encoder == "linear" and config.arch != "batchtopk":
            _export(model, config, out, member, "superjax train-sae")
        members.append({**member, **evaluate(model, truth, test, k_eval)})
    return _write_report(config, out, members, result, start,
                         **selection(config, trained, members))


def _write_report(config: TrainSAEConfig, out: pathlib.Path, members: list[dict[str, Any]],
                  result: train.FitResult, start: float, **extra) -> dict[str, Any]:
    """DIR/report.json: the one SAE's scores at the top level, or a sweep's as a list."""
    scores = {"sweep": members} if config.members else members[0]
    rep = {"config": dataclasses.asdict(config), **extra, **scores,
           "resumed_from": result.resumed_from, "seconds": time.perf_counter() - start,
           "environment": report.environment()}
    report.write_json(out / "report.json", rep)
    return rep


def fit_schedule(steps: int, **settings) -> train.FitConfig:
    """The studies' loop settings for ``steps``: 10 % warm-up (at most 100 steps), 100 metric
    records and 5 checkpoints; ``settings`` are the other :class:`train.FitConfig` fields."""
    return train.FitConfig(steps=steps, warmup_steps=min(100, steps // 10),
                           log_every=max(1, steps // 100), checkpoint_every=max(1, steps // 5),
                           **settings)


def _fit_config(config: TrainSAEConfig) -> train.FitConfig:
    return fit_schedule(config.steps, lam=config.lam, learning_rate=config.learning_rate,
                        train_decoder=not config.known_dictionary, k_aux=config.k_aux)


def run_activations(config: TrainSAEConfig, out: pathlib.Path, *, progress: bool = True,
                    mesh=None) -> dict[str, Any]:
    """Trains on an activation file (no ground truth): FVU, L0 and dead fraction on held-out rows.

    The SAE trains on activations scaled to mean norm √M; the scale is folded into the saved
    weights (DIR/saelens/), so the exported SAE takes raw activations.
    """
    from superjax import activations

    start = time.perf_counter()
    arr = activations.open_array(config.activations)
    if arr.shape[1] != config.m:
        raise ValueError(f"--m {config.m} does not match the activation file, whose rows have "
                         f"M = {arr.shape[1]} (file {config.activations}, shape {arr.shape})")
    activations.check_finite(arr)
    test = min(config.test_samples, max(1, arr.shape[0] // 10))
    rows = arr.shape[0] - test
    if rows < config.batch_size:
        raise ValueError(f"the activation file has {arr.shape[0]} rows: {rows} left for training "
                         f"after {test} held out, fewer than one batch ({config.batch_size})")
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "config.json", dataclasses.asdict(config))
    batches = activations.stream(arr, rows=rows, batch_size=config.batch_size, seed=config.seed)
    result = train.fit(config.sae, batches, _fit_config(config), out, seed=config.seed,
                       progress=progress, mesh=mesh, **config.fit_sweep())
    held = jnp.asarray(np.asarray(arr[rows:], np.float32))
    members = []
    trained = unstack(config.sae, result.params, result.sweep)
    for i, model in enumerate(trained):
        member = _member(config, result, i)
        activations.fold_scale(model, batches.scale)
        codes = model(held)
        if config.arch != "batchtopk":
            _export(model, config, out, member, "superjax train-sae --activations")
        members.append({**member, "fvu": float(metrics.fvu(held, codes.reconstruction)),
                        "l0": float(metrics.l0(codes.codes)),
                        "dead_fraction": float(metrics.dead_fraction(codes.codes))})
    return _write_report(config, out, members, result, start, input_scale=batches.scale,
                         train_rows=rows, test_rows=test, **selection(config, trained, members))


GAP_ARCHS = ("relu", "topk", "mlp", "lista", "sparse-coding")


def amortisation_gap(
    m: int, n: int, k: int, out: str | pathlib.Path, *, seed: int = 0, steps: int = 2000,
    lam: float = 0.1, samples: int = 16384, progress: bool = True,
) -> dict[str, Any]:
    """Encoders against per-sample inference, with the TRUE and with LEARNED dictionaries.

    For each encoder (one-layer ReLU, TopK, MLP, LISTA) and dictionary D (the true one, frozen;
    then the encoder's own learned one), on held-out data x̃ = y − b_dec, and for classical
    dictionary learning ("sparse-coding": FISTA codes, learned dictionary; with the true
    dictionary it would be the per-sample optimum itself, which every row already reports):

    * objective_gap = mean L(x̃, enc(y); D) − mean min_z L(x̃, z; D),
      L(x, z; D) = ½‖x − Dz‖² + (λ/2)‖z‖₁, which is the SAE training loss divided by 2 for
      unit atoms; the minimum is solved per sample by FISTA (non-negative, certified gap);
    * latent_mcc of the encoder's codes and optimal_latent_mcc of the per-sample optimum;
    * FLOPs per sample of the encoder and of the FISTA solve.

    Writes DIR/report.json (and each run's files under DIR/{true,learned}_dictionary/ARCH/).
    """
    from superjax import sparse_coding

    out = pathlib.Path(out)
    lam_objective = lam / 2
    rows: dict[str, dict[str, Any]] = {}
    for setting, known in (("true_dictionary", True), ("learned_dictionary", False)):
        rows[setting] = {}
        for arch in GAP_ARCHS:
            if known and arch == "sparse-coding":
                continue
            cfg = TrainSAEConfig(m=m, n=n, k=k, arch=arch, known_dictionary=known, steps=steps,
                                 lam=lam, samples=samples, seed=seed)
            (model,), truth, test, _, _ = _train(cfg, out / setting / arch, progress)
            codes = model(test.y).codes
            dictionary = model.dictionary
            centred = test.y - model.b_dec[...]
            best = sparse_coding.fista(dictionary, centred, lam_objective, nonneg=not cfg.signed,
                                       tol=1e-5, max_iter=20_000)
            enc_obj = sparse_coding.lasso_objective(dictionary, centred, codes, lam_objective)
            rows[setting][arch] = {
                "latent_mcc": float(metrics.latent_mcc(test.z, codes)),
                "optimal_latent_mcc": float(metrics.latent_mcc(test.z, best.codes)),
                "objective_gap": float(jnp.mean(enc_obj) - jnp.mean(best.objective)),
                "relative_objective_gap": float(jnp.mean(enc_obj) / jnp.mean(best.objective)
                                                - 1.0),
                "optimum_certified_fraction": float(jnp.mean(best.converged)),
                "encoder_flops_per_sample": cfg.sae.encoder_flops(),
                "fista_flops_per_sample": float(jnp.mean(best.iterations)) * 4 * m * cfg.sae.d_sae,
                "dict_recovery_rate": float(metrics.dictionary_metrics(truth, dictionary)
                                            .recovery_rate_095),
                "fvu": float(metrics.fvu(test.y, model(test.y).reconstruction)),
                "l0": float(metrics.l0(codes)),
            }
    rep = {"m": m, "n": n, "k": k, "seed": seed, "steps": steps, "lam": lam,
           "objective": "L(x, z; D) = 0.5*||x - D z||^2 + (lam/2)*||z||_1",
           **rows, "environment": report.environment()}
    report.write_json(out / "report.json", rep)
    return rep


def evaluate(model: models.SparseAutoencoder, truth, test: data.Batch, key) -> dict[str, float]:
    """Ground-truth scores of ``model`` on a held-out batch, with their chance levels."""
    out = model(test.y)
    dict_scores = metrics.dictionary_metrics(truth, model.dictionary)
    chance = metrics.random_dictionary_metrics(key, truth, model.config.d_sae)
    values = {
        "latent_mcc": metrics.latent_mcc(test.z, out.codes),
        "latent_mcc_chance": metrics.latent_mcc_chance(key, test.z, out.codes),
        "dict_recovery_rate": dict_scores.recovery_rate_095,
        "dict_recovery_rate_099": dict_scores.recovery_rate_099,
        "dict_mean_cos": dict_scores.mean_cos,
        "dict_mmcs": dict_scores.mmcs,
        "random_dict_mean_cos": chance.mean_cos,
        "random_dict_recovery_rate": chance.recovery_rate_095,
        "fvu": metrics.fvu(test.y, out.reconstruction),
        "l0": metrics.l0(out.codes),
        "dead_fraction": metrics.dead_fraction(out.codes),
    }
    return {k: float(jnp.asarray(v)) for k, v in values.items()}
