"""SAE training throughput: superjax's train step against a plain PyTorch SAE of the same math.

Both sides run one full optimiser step per batch: forward, loss (ReLU + decoder-norm-weighted L1, or
TopK + MSE), backward, global-norm clipping at 1, Adam, removal of the decoder gradient parallel to
each atom, and renormalisation of the atoms. Same shapes, same dtype, same device, same process.
superjax's step is AOT-compiled first (compile time reported apart) and donates its state;
each side gets one untimed warm-up step. Timing is interleaved: every round times one superjax
step, one run of the GEMM floor and one PyTorch step in turn, and each figure is the median over
the rounds, so a drift in a shared machine's speed hits all sides alike and the ratios hold.
Throughput is activations per second of the median step.

``topk-gather`` is superjax's TopK with ``SAEConfig(topk_kernel="gather")`` (only the k selected
latents are decoded and receive gradients); its PyTorch peer is the same dense TopK as ``topk``.

FLOPs per step are counted as 12·B·d·n (two B×d×n matmuls forward, four backward); on a GPU the
report gives the achieved fraction of the device's dense bf16 peak (table below; use
``--dtype bfloat16`` for the goal the issue sets). The GEMM floor is the measured time of the
dense step's five B×d×n matmuls alone (encoder and decoder forward; decoder-weight, code and
encoder-weight gradients), as XLA dots on the same device: no step built on XLA's matmuls can
run faster, so ``torch / floor`` is the largest speed-up over PyTorch they allow. Peak memory: on
GPU the allocator's peak for each framework; on CPU XLA's own memory analysis of the compiled
step for superjax (PyTorch's CPU allocator exposes no peak).

    python benchmarks/bench_sae.py [--shapes 768x24576,2304x16384] [--batch 4096] [--steps 5]
        [--archs relu,topk] [--k 32] [--dtype float32|bfloat16] [--no-torch]
        [--out runs/bench_sae.json]

PyTorch is not a superjax dependency: `pip install torch` (CPU wheels install from a local file
where one is provided) to get the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from superjax import models, report, train

# Dense bf16 peak FLOP/s (no sparsity) by device kind, from the vendors' data sheets.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
             "TPU v5e": 197e12, "TPU v5p": 459e12}
LR, LAM = 1e-4, 1e-3


def _peak(kind: str) -> float | None:
    for name, flops in BF16_PEAK.items():
        if name.lower() in kind.lower():
            return flops
    return None


def setup_jax(d, n, arch, k, batch, steps, dtype):
    """Compiles superjax's train step; returns (one step, blocking; facts about the step)."""
    activation, _, kernel = arch.partition("-")
    cfg = models.SAEConfig(d_in=d, d_sae=n, activation=activation,
                           k=k if activation == "topk" else 0, topk_kernel=kernel or "dense")
    tx = train.optimizer(LR, total_steps=steps + 1)
    graphdef, state = train.init_state(models.SparseAutoencoder(cfg, rngs=nnx.Rngs(0)), tx)
    state = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                         else a, state)
    x = jax.random.normal(jax.random.key(1), (batch, d), dtype)
    step = jax.jit(train.make_train_step(graphdef, tx), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, x, LAM).compile()
    facts = {"compile_seconds": time.perf_counter() - start}
    mem = compiled.memory_analysis()
    if mem is not None:  # XLA's own analysis of the step (the CPU allocator reports no peak)
        facts["peak_bytes"] = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                               + mem.output_size_in_bytes)
    held = {"state": state}

    def run():
        held["state"], metrics = compiled(held["state"], x, LAM)
        facts["loss"] = float(metrics["loss"])  # blocks until the step is done

    run()  # first run (allocation) is not timed
    device = jax.devices()[0]
    if device.platform == "gpu":
        facts["memory_stats"] = device.memory_stats  # read after the timed steps
    return run, facts


def setup_gemm(d, n, batch, dtype):
    """The dense step's five matmuls alone (the step's hardware floor), as one blocking call."""
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    x, w, z = (jax.random.normal(key, shape, dtype) for key, shape in
               ((k1, (batch, d)), (k2, (d, n)), (k3, (batch, n))))
    specs = ("bd,dn->bn", "bn,dn->bd", "bn,bd->nd", "bd,dn->bn", "bd,bn->dn")
    operands = ((x, w), (z, w), (z, x), (x, w), (x, z))
    dots = jax.jit(lambda ops: [jnp.einsum(s, a, b) for s, (a, b) in zip(specs, ops, strict=True)])

    def run():
        jax.block_until_ready(dots(operands))

    run()
    return run


def setup_torch(d, n, arch, k, batch, dtype_name):
    """The same SAE step in plain PyTorch; returns (one step, blocking; facts)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() and jax.devices()[0].platform == "gpu" else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    w_dec = torch.randn(n, d, device=dev)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = {"W_enc": w_dec.T.clone(), "b_enc": torch.zeros(n, device=dev),
              "W_dec": w_dec, "b_dec": torch.zeros(d, device=dev)}
    params = {name: p.to(dtype).requires_grad_() for name, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=LR)
    x = torch.randn(batch, d, device=dev, dtype=dtype)
    facts = {"torch": torch.__version__, "torch_device": dev}

    def run():
        pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        if arch.startswith("topk"):
            vals, idx = pre.topk(k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        else:
            z = torch.relu(pre)
        recon = z @ params["W_dec"] + params["b_dec"]
        loss = ((x - recon) ** 2).sum(-1).mean()
        if arch == "relu":
            loss = loss + LAM * (z.abs() * params["W_dec"].norm(dim=1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            w, g = params["W_dec"], params["W_dec"].grad
            g -= (g * w).sum(1, keepdim=True) * w
            torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
            opt.step()
            w /= w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        facts["loss"] = float(loss.detach())  # synchronises on a GPU too

    torch.set_num_threads(os.cpu_count() or 1)
    run()  # warm-up
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        facts["peak"] = torch.cuda.max_memory_allocated  # read after the timed steps
    return run, facts


def interleaved(runs: dict, rounds: int) -> dict[str, float]:
    """Median seconds of one call of each runner, called in turn round after round, so that a
    drift in the machine's speed (shared hosts drift by tens of per cent) hits every side alike."""
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="768x24576,2304x16384", help="d_in x d_sae pairs")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5,
                   help="timed rounds; each round times one step of every side in turn, and the "
                        "median round is reported")
    p.add_argument("--archs", default="relu,topk,topk-gather",
                   help="relu, topk (dense kernel) and topk-gather (SAEConfig.topk_kernel)")
    p.add_argument("--k", type=int, default=32, help="TopK k")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--out", default="runs/bench_sae.json")
    args = p.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        p.error(f"--shapes must look like 768x24576,2304x16384; got {args.shapes!r}")
    archs = [a for a in args.archs.split(",") if a]
    for a in archs:
        if a not in ("relu", "topk", "topk-gather"):
            p.error(f"--archs takes relu, topk and topk-gather; got {a!r}")
    if args.batch < 1 or args.steps < 1:
        p.error("--batch and --steps must be >= 1")
    have_torch = False
    if not args.no_torch:
        try:
            import torch  # noqa: F401

            have_torch = True
        except ImportError:
            print("PyTorch is not installed: no peer figures (pip install torch)", file=sys.stderr)
    env = report.environment()
    kind = jax.devices()[0].device_kind
    peak = _peak(kind) if jax.devices()[0].platform != "cpu" else None
    print(f"device: {env['device']} ({kind}); jax {env['jax']}, flax {env['flax']}; batch "
          f"{args.batch}; dtype {args.dtype}; {args.steps} timed rounds (median)")
    dtype = jnp.dtype(args.dtype)
    rows = []
    for d, n in shapes:
        for arch in archs:
            dense = arch != "topk-gather"  # gather skips most of the dense step's FLOPs
            flops = 12.0 * args.batch * d * n
            row = {"d_in": d, "d_sae": n, "arch": arch, "batch": args.batch,
                   "dtype": args.dtype, "flops_per_step": flops, "rounds": args.steps}
            run_jax, sj = setup_jax(d, n, arch, args.k, args.batch, args.steps, dtype)
            runs = {"superjax": run_jax}
            if dense:
                runs["floor"] = setup_gemm(d, n, args.batch, dtype)
            if have_torch:
                runs["torch"], th = setup_torch(d, n, arch, args.k, args.batch, args.dtype)
            seconds = interleaved(runs, args.steps)
            sj["seconds_per_step"] = seconds["superjax"]
            if "memory_stats" in sj:
                sj["peak_bytes"] = sj.pop("memory_stats")().get("peak_bytes_in_use")
            sj["activations_per_s"] = args.batch / sj["seconds_per_step"]
            sj["flops_per_s"] = flops / sj["seconds_per_step"]
            row["superjax"] = sj
            if peak and dense:
                sj["fraction_of_bf16_peak"] = sj["flops_per_s"] / peak
            if dense:
                row["gemm_floor_seconds"] = seconds["floor"]
                sj["fraction_of_gemm_floor"] = seconds["floor"] / sj["seconds_per_step"]
            line = (f"d={d:5d} n={n:6d} {arch:11s}  superjax {sj['activations_per_s']:10.0f} act/s "
                    f"({sj['flops_per_s'] / 1e12:.3f} TFLOP/s, compile {sj['compile_seconds']:.1f}"
                    f" s, peak {report.fmt((sj.get('peak_bytes') or 0) / 2**30, 2)} GiB)")
            if have_torch:
                th["seconds_per_step"] = seconds["torch"]
                if callable(th.get("peak")):
                    th["peak_bytes"] = th.pop("peak")()
                th["activations_per_s"] = args.batch / th["seconds_per_step"]
                row["torch"] = th
                row["ratio_vs_torch"] = sj["activations_per_s"] / th["activations_per_s"]
                line += (f"  torch {th['activations_per_s']:10.0f} act/s  ratio "
                         f"{row['ratio_vs_torch']:.2f}x")
                if dense:
                    row["max_ratio_vs_torch"] = th["seconds_per_step"] / seconds["floor"]
                    line += f" (GEMM floor allows {row['max_ratio_vs_torch']:.2f}x)"
            if dense:
                line += f"  {100 * sj['fraction_of_gemm_floor']:.0f} % of GEMM floor"
            if "fraction_of_bf16_peak" in sj:
                line += f"  {100 * sj['fraction_of_bf16_peak']:.1f} % of bf16 peak"
            print(line, flush=True)
            rows.append(row)
            del runs, run_jax  # free this row's buffers before the next
    report.write_json(args.out, {"environment": env, "device_kind": kind, "rows": rows,
                                 "args": vars(args)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
