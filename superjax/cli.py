"""The ``superjax`` command line: bounds, phase-transition, train-sae, amortisation-gap, recover,
identifiability, classifier-sae, demo.

Bad input exits with status 2 and one line naming the argument and the allowed range.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from superjax import __version__


def _float_list(text: str, kind=float, example: str = "0.1,0.25,0.5") -> tuple[float, ...]:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as {example}; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _int_list(text: str) -> tuple[int, ...]:
    return _float_list(text, int, "2,4,8")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="superjax", description=(
        "Extract features stored in superposition and measure how far each method is from "
        "the theoretical limit."))
    p.add_argument("--version", action="version", version=f"superjax {__version__}")
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-process run first (jax.distributed.initialize): detected on "
                        "TPU, Slurm and Open MPI; elsewhere give --coordinator, --num-processes "
                        "and --process-id. Every process runs the same command; process 0 writes")
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (--distributed)")
    p.add_argument("--num-processes", type=int, default=None, help="processes (--distributed)")
    p.add_argument("--process-id", type=int, default=None, help="this process (--distributed)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bounds", help="compressed-sensing limits for (M, N, K), as JSON")
    b.add_argument("--m", type=int, required=True, help="neurons / measurements M")
    b.add_argument("--n", type=int, required=True, help="features N (M <= N)")
    b.add_argument("--k", type=int, required=True, help="active features per sample K (K <= N)")
    b.add_argument("--signed", action="store_true", help="signed codes (default: non-negative)")

    t = sub.add_parser("phase-transition", help="empirical L1 phase transition vs Donoho-Tanner")
    t.add_argument("--n", type=int, default=200, help="features N (default 200)")
    t.add_argument("--trials", type=int, default=100, help="trials per cell (default 100)")
    t.add_argument("--deltas", type=_float_list, default=(0.1, 0.25, 0.5),
                   help="comma-separated δ = M/N values in (0, 1) (default 0.1,0.25,0.5)")
    t.add_argument("--signed", action="store_true", help="signed codes (default: non-negative)")
    t.add_argument("--points", type=int, default=16, help="ρ values per δ (default 16)")
    t.add_argument("--solver", default="admm", help="admm (basis pursuit) or fista (small-λ Lasso)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("train-sae", help="train an SAE on synthetic superposition data, score it")
    s.add_argument("--m", type=int, default=None,
                   help="neurons M (required for synthetic data; with --activations, the file's "
                        "row width, which --m must match if given)")
    s.add_argument("--n", type=int, required=True, help="true features N")
    s.add_argument("--k", type=int, required=True, help="active features per sample K")
    s.add_argument("--arch", default="relu",
                   help="relu, topk, batchtopk, jumprelu, mlp, lista or sparse-coding "
                        "(dictionary learning with FISTA codes) (default relu)")
    s.add_argument("--known-dictionary", action="store_true",
                   help="freeze the decoder at the true dictionary (train the encoder only)")
    s.add_argument("--latents", type=int, default=None, help="SAE width (default N)")
    s.add_argument("--sae-k", type=int, default=None, help="k of TopK/BatchTopK (default K)")
    s.add_argument("--samples", type=int, default=16384, help="training-set size")
    s.add_argument("--steps", type=int, default=3000)
    s.add_argument("--batch-size", type=int, default=1024)
    s.add_argument("--lam", type=float, default=0.1, help="L1 / L0 coefficient")
    s.add_argument("--lams", type=_float_list, default=(),
                   help="comma-separated λ values: one SAE each, trained in one compiled step "
                        "(relu, jumprelu, mlp, lista); report.json then lists them under 'sweep'")
    s.add_argument("--sae-ks", type=_int_list, default=(),
                   help="comma-separated k values of topk/batchtopk: one SAE each, trained in one "
                        "compiled step; report.json then lists them under 'sweep'")
    s.add_argument("--restarts", type=int, default=1,
                   help="SAEs per λ (or k) from seeds SEED, SEED+1, ... (one compiled step); with "
                        "2 or more, report.json scores each λ (k) by how well its restarts agree "
                        "and selects the best (no ground truth needed)")
    s.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    s.add_argument("--signed", action="store_true", help="signed codes (default non-negative)")
    s.add_argument("--auxk", type=int, default=0,
                   help="AuxK: dead latents that reconstruct the residual (Gao et al. use M/2; "
                        "default 0 = off)")
    s.add_argument("--topk-kernel", default="auto",
                   help="auto, dense or gather: how --arch topk decodes and back-propagates "
                        "(gather: only the k chosen latents; same training, faster on CPU; "
                        "auto: gather on CPU, dense on accelerators)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--devices", type=int, default=None,
                   help="train data-parallel over this many devices (default all; the batch size "
                        "must be a multiple of it)")
    s.add_argument("--activations", default=None,
                   help="train on this .npy/.safetensors file of activations (samples, M) instead "
                        "of synthetic data; N is then the SAE width")
    s.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    g = sub.add_parser("amortisation-gap",
                       help="SAE encoders vs per-sample inference, true and learned dictionaries")
    g.add_argument("--m", type=int, default=8)
    g.add_argument("--n", type=int, default=16)
    g.add_argument("--k", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--lam", type=float, default=0.1, help="SAE L1 coefficient")
    g.add_argument("--out", type=pathlib.Path, required=True)
    g.add_argument("--quiet", action="store_true")

    r = sub.add_parser("recover", help="query-access recovery of the directions of a ridge sum")
    r.add_argument("--d", type=int, default=16, help="input dimension d")
    r.add_argument("--n", type=int, default=32,
                   help="non-degenerate features n (n > d: superposition)")
    r.add_argument("--responses", default="mixed",
                   help="mixed, relu, tanh, sigmoid, sin, bump or abs")
    r.add_argument("--directions", default="uniform", help="uniform or clustered")
    r.add_argument("--delta", type=float, default=0.3, help="angle (radians) inside a cluster")
    r.add_argument("--noise", type=float, default=0.01, help="oracle noise relative to std(f)")
    r.add_argument("--method", default="fourier", help="fourier, hessian, hermite or student")
    r.add_argument("--budget", type=int, default=400_000, help="query budget")
    r.add_argument("--degenerate", type=int, default=0,
                   help="degenerate polynomial controls added to f (z, z², z³ in turn)")
    r.add_argument("--no-split", action="store_true",
                   help="skip the split stages that separate close pairs (recovery.split, "
                        "recovery.split_pairs)")
    r.add_argument("--no-drop", action="store_true",
                   help="keep directions that their close neighbours can take over, or that "
                        "share one feature (recovery.drop_redundant, recovery.collapse_split)")
    r.add_argument("--no-polish", action="store_true",
                   help="skip the last refit on the search's own queries that the measured fit "
                        "variance calls for at high noise (recovery.polish)")
    r.add_argument("--polish-target", type=float, default=1e-5,
                   help="fit variance (share of var y) the polish refits down to (default 1e-5); "
                        "0: refit on all of the search's queries, which brings the directions "
                        "to the Cramér–Rao bound of the whole budget (see --angle-bound)")
    r.add_argument("--fit-queries", type=int, default=None,
                   help="queries of the finishing fit, out of the budget (default: a fifth of "
                        "it, at most 40000; more tells weak features from noise at high noise)")
    r.add_argument("--angle-bound", action="store_true",
                   help="also compute what the queries allow: each direction's Cramér–Rao "
                        "RMS angle on the finishing fit's queries and on the whole budget "
                        "(recovery.angle_bounds; costs about as much as the fit again)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    r.add_argument("--quiet", action="store_true", help="no progress lines")

    i = sub.add_parser("identifiability",
                       help="classifier on a synthetic world with known latents: linear R², "
                            "additivity, SAE recovery, intrusion")
    i.add_argument("--latents", type=int, default=64, help="latents N (default 64)")
    i.add_argument("--neurons", type=int, default=64,
                   help="neurons M in the representation (M < N: superposition; default 64)")
    i.add_argument("--k", type=int, default=4, help="active latents per sample K (default 4)")
    i.add_argument("--samples", type=int, default=32768,
                   help="training samples of the SAEs and the linear read-out (and of the "
                        "classifier with --classifier-data fixed; default 32768)")
    i.add_argument("--classifier-data", default="fresh",
                   help="fresh: a new batch of the world every classifier step (the population "
                        "loss); fixed: the --samples set (default fresh)")
    i.add_argument("--classifier-steps", type=int, default=16000,
                   help="classifier steps (batch 1024; default 16000)")
    i.add_argument("--sae-steps", type=int, default=3000)
    i.add_argument("--lam", type=float, default=0.1,
                   help="L1 coefficient of the ReLU SAE (default 0.1)")
    i.add_argument("--lams", type=_float_list, default=(),
                   help="comma-separated λ values: choose the ReLU SAE's λ among them by seed "
                        "agreement (no ground truth; scored against it afterwards)")
    i.add_argument("--restarts", type=int, default=3,
                   help="initialisations per λ for --lams (default 3)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    i.add_argument("--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("classifier-sae",
                       help="train a classifier on a bundled dataset, an SAE on its hidden "
                            "activations, and score the latents")
    c.add_argument("--dataset", default="digits",
                   help="digits, iris, wine or breast_cancer (scikit-learn's bundled data)")
    c.add_argument("--samples", type=int, default=None, help="use this many samples (default all)")
    c.add_argument("--test-fraction", type=float, default=0.25)
    c.add_argument("--neurons", type=int, default=64, help="hidden ReLU neurons M")
    c.add_argument("--latents", type=int, default=128, help="SAE width")
    c.add_argument("--k", type=int, default=4, help="TopK k")
    c.add_argument("--auxk", type=int, default=None,
                   help="AuxK dead latents (default M/2; 0 = off)")
    c.add_argument("--classifier-steps", type=int, default=2000)
    c.add_argument("--sae-steps", type=int, default=3000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser("demo", help="the main job: every study at small size, with a report")
    d.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/demo"))
    d.add_argument("--full", action="store_true", help="full-size studies (meant for a GPU)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _bounds(args) -> None:
    from superjax import bounds
    from superjax.report import to_jsonable

    report = bounds.recovery_bounds(args.m, args.n, args.k, args.signed)._asdict()
    print(json.dumps(to_jsonable(report), indent=2))


def _phase_transition(args) -> None:
    from superjax import phase_transition, plots, report

    config = phase_transition.PhaseTransitionConfig(
        n=args.n, trials=args.trials, deltas=args.deltas, signed=args.signed,
        points=args.points, solver=args.solver, seed=args.seed)
    _writable(args.out)
    result = phase_transition.run(config, progress=not args.quiet)
    report.write_json(args.out / "results.json", result)
    plots.phase_transition([result], args.out / "phase_transition.png")
    for row in result["rows"]:
        print(f"delta={row['delta']:.3f}  M={row['m']:4d}  rho_weak={row['rho_weak']:.4f}  "
              f"rho50={report.fmt(row['rho50'], 4)} ± {report.fmt(row['rho50_se'], 4)}  "
              f"|error|={report.fmt(row['abs_error'], 4)}")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'phase_transition.png'} "
          f"({result['seconds']:.1f} s)")


def _train_sae(args) -> None:
    from superjax import sae_study, train

    m = args.m
    if m is None:
        if args.activations is None:
            raise ValueError("--m is required for synthetic data (with --activations FILE the "
                             "file's rows give it)")
        from superjax import activations

        m = activations.open_array(args.activations).shape[1]
    config = sae_study.TrainSAEConfig(
        m=m, n=args.n, k=args.k, arch=args.arch, latents=args.latents, sae_k=args.sae_k,
        known_dictionary=args.known_dictionary, samples=args.samples, steps=args.steps,
        batch_size=args.batch_size, lam=args.lam, learning_rate=args.lr, signed=args.signed,
        seed=args.seed, activations=args.activations, k_aux=args.auxk,
        topk_kernel=args.topk_kernel, lams=args.lams, restarts=args.restarts,
        sae_ks=args.sae_ks)
    mesh = train.data_mesh(args.devices)
    _writable(args.out)
    rep = sae_study.run(config, args.out, progress=not args.quiet, mesh=mesh)
    keys = ("latent_mcc", "latent_mcc_chance", "dict_recovery_rate", "dict_mean_cos",
            "random_dict_mean_cos", "fvu", "l0", "dead_fraction")
    swept = config.swept
    for member in rep.get("sweep", [rep]):
        shown = [k for k in keys if k in member]  # an activation file has no ground truth
        value = f"{swept}={member[swept]:g} seed={member['seed']}  " if "sweep" in rep else ""
        print(value + "  ".join(f"{k}={member[k]:.4f}" for k in shown))
    _print_selection(rep)
    print(f"wrote {args.out / 'report.json'}")


def _print_selection(rep: dict) -> None:
    """The λ (or k) choice of a sweep with restarts: each value's scores, and the one chosen."""
    width = rep["config"]["latents"] or rep["config"]["n"]
    for name, label in (("lam", "λ"), ("k", "k")):
        sel = rep.get(f"{name}_selection")
        if sel is None:
            continue
        rows = [("seed agreement per {}", "seed_agreement")]
        if "score" in sel:  # agreement weighted by the variance explained (k)
            rows.append(("agreement × (1 − FVU) per {}", "score"))
        chosen = {rows[-1][1]: f"  -> selected {label} = {sel[f'selected_{name}']:g}"}
        rows.append(("atoms found at a neighbouring {} at |cos| ≥ 0.95", "neighbour_rate"))
        rows.append(("atoms reproduced at |cos| ≥ 0.99 per {}", "reproducible_rate"))
        rows.append(("of these, found by most restarts of a neighbouring {}", "confirmed_rate"))
        counted = "confirmed_rate" if name == "k" else "reproducible_rate"  # the atom rule's
        pick = sel[f"selected_{name}_atoms"]
        atoms = sel[counted][sel[f"{name}s"].index(pick)] * width  # its evidence, in atoms
        chosen[counted] = f"  -> for the atoms {label} = {pick:g} ({atoms:.1f} atoms per restart)"
        if "latent_mcc" in sel:
            rows.append(("latent MCC per {} (scored after the choice)", "latent_mcc"))
        for title, key in rows:
            print(title.format(label) + ": " + "  ".join(
                f"{v:g}: {a:.4f}" for v, a in zip(sel[f"{name}s"], sel[key], strict=True))
                + chosen.get(key, ""))


def _amortisation_gap(args) -> None:
    from superjax import sae_study

    sae_study.TrainSAEConfig(m=args.m, n=args.n, k=args.k, steps=args.steps, lam=args.lam,
                             seed=args.seed)  # validates the arguments before any work
    _writable(args.out)
    rep = sae_study.amortisation_gap(args.m, args.n, args.k, args.out, seed=args.seed,
                                     steps=args.steps, lam=args.lam, progress=not args.quiet)
    for setting in ("true_dictionary", "learned_dictionary"):
        for arch, row in rep[setting].items():
            print(f"{setting:18s} {arch:6s} latent_mcc={row['latent_mcc']:.3f} "
                  f"optimal_latent_mcc={row['optimal_latent_mcc']:.3f} "
                  f"objective_gap={row['objective_gap']:.4f} "
                  f"flops={row['encoder_flops_per_sample']}")
    print(f"wrote {args.out / 'report.json'}")


def _recover(args) -> None:
    from superjax import recovery_study

    config = recovery_study.RecoverConfig(
        d=args.d, n=args.n, responses=args.responses, directions=args.directions,
        delta=args.delta, noise=args.noise, method=args.method, budget=args.budget,
        degenerate=args.degenerate, seed=args.seed, split=not args.no_split,
        drop=not args.no_drop, polish=not args.no_polish, polish_target=args.polish_target,
        fit_queries=args.fit_queries, angle_bound=args.angle_bound)
    _writable(args.out)
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    rep = recovery_study.run(config, args.out, progress=say)
    keys = ("recovery_rate_099", "recovery_rate_095", "matched_rate_099", "false_directions",
            "mean_angle_deg", "rms_angle_deg", "fit_angle_bound_deg", "budget_angle_bound_deg",
            "f_rel_mse", "f_rel_mse_2x")
    print("  ".join(f"{k}={rep[k]:.4g}" for k in keys if k in rep)
          + f"  queries={rep['queries']}  seconds={rep['seconds']:.1f}")
    print(f"wrote {args.out / 'result.json'}")


def _print_report(rep: dict, keys: tuple[str, ...], path: pathlib.Path) -> None:
    if rep["status"] != "ok":
        print(f"accuracy={rep['accuracy']:.4f}  chance={rep['chance_accuracy']:.4f}")
        print(rep["status"], file=sys.stderr)
    else:
        print("  ".join(f"{k}={rep[k]:.4f}" if isinstance(rep[k], float) else f"{k}={rep[k]}"
                        for k in keys if k in rep))
    print(f"wrote {path}")


def _identifiability(args) -> None:
    from superjax import network_study

    config = network_study.IdentifiabilityConfig(
        latents=args.latents, neurons=args.neurons, k=args.k, samples=args.samples,
        classifier_data=args.classifier_data, classifier_steps=args.classifier_steps,
        sae_steps=args.sae_steps, lam=args.lam,
        lams=args.lams, restarts=args.restarts, seed=args.seed)
    _writable(args.out)
    rep = network_study.identifiability(config, args.out, progress=not args.quiet)
    _print_selection(rep)
    _print_report(rep, ("accuracy", "bayes_accuracy", "test_ce", "bayes_ce", "linear_r2",
                        "linear_r2_ceiling",
                        "additivity_cos", "null_additivity_cos", "neuron_latent_mcc",
                        "sae_latent_mcc", "sae_latent_mcc_chance", "intrusion_accuracy",
                        "neuron_intrusion_accuracy", "intrusion_chance"),
                  args.out / "report.json")


def _classifier_sae(args) -> None:
    from superjax import network_study

    config = network_study.RealNetworkConfig(
        dataset=args.dataset, samples=args.samples, test_fraction=args.test_fraction,
        neurons=args.neurons, latents=args.latents, k=args.k, k_aux=args.auxk,
        classifier_steps=args.classifier_steps, sae_steps=args.sae_steps, seed=args.seed)
    _writable(args.out)
    rep = network_study.real_network(config, args.out, progress=not args.quiet)
    _print_report(rep, ("accuracy", "spliced_accuracy", "ce_loss_recovered", "fvu", "l0",
                        "dead_fraction", "intrusion_accuracy",
                        "neuron_intrusion_accuracy", "random_intrusion_accuracy",
                        "intrusion_chance", "label_purity", "neuron_label_purity"),
                  args.out / "report.json")


def _demo(args) -> None:
    from superjax import demo

    _writable(args.out)
    start = time.perf_counter()
    path = demo.run(args.out, full=args.full, progress=not args.quiet)
    print(f"wrote {path} ({time.perf_counter() - start:.0f} s)")


def _writable(out: pathlib.Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a directory, but {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out: cannot create directory {out}: {err.strerror}") from None


COMMANDS = {"bounds": _bounds, "phase-transition": _phase_transition, "train-sae": _train_sae,
            "amortisation-gap": _amortisation_gap, "recover": _recover,
            "identifiability": _identifiability, "classifier-sae": _classifier_sae,
            "demo": _demo}


def _join(args) -> None:
    """jax.distributed.initialize with the given settings (None: detected from the cluster)."""
    import jax

    try:
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes, process_id=args.process_id)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--distributed: could not join the run ({err}); outside TPU, Slurm and "
                         f"Open MPI give --coordinator HOST:PORT, --num-processes and "
                         f"--process-id") from None


CACHE_MAX_BYTES = 4 << 30


def _compilation_cache() -> None:
    """Keeps compiled XLA programs between commands (JAX's persistent compilation cache).

    A repeated command at the same shapes then loads its programs instead of compiling them
    (compilation is about half of the demo's time on a CPU). A directory already configured
    for JAX (e.g. by ``JAX_COMPILATION_CACHE_DIR``) is left alone; otherwise
    ``SUPERJAX_CACHE_DIR`` names it, by default ``$XDG_CACHE_HOME/superjax/xla``
    (``~/.cache/...``), capped at 4 GiB (least recently used programs go first; JAX needs
    ``filelock`` for the cap). ``SUPERJAX_CACHE_DIR=`` (empty) turns it off.
    """
    import jax

    if jax.config.jax_compilation_cache_dir is not None:
        return
    path = os.environ.get("SUPERJAX_CACHE_DIR")
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "superjax", "xla")
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        if jax.config.jax_compilation_cache_max_size == -1:
            jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _compilation_cache()
    try:
        if args.distributed or args.coordinator is not None:
            _join(args)
        COMMANDS[args.command](args)
    except (ValueError, FloatingPointError) as err:
        # ValueError covers bad input and unusable checkpoints (CheckpointError); a diverged
        # training run is a FloatingPointError naming the step.
        print(f"superjax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"superjax {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `superjax train-sae ... | head -1`: the reader left early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
