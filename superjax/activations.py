"""Activation files (.npy, .safetensors) of any size as a resumable, shuffled batch stream.

Rows are read memory-mapped, a window of ``buffer_chunks`` chunks at a time: the chunk order is a
fresh permutation every epoch, and each batch draws rows uniformly from the current window (the
shuffle buffer). Both are functions of the step alone (``fold_in``), so a resumed run reads the
same batches as an uninterrupted one. Activations are scaled by one factor so that their mean
norm is √M (as in SAELens); :func:`fold_scale` writes that factor back into a trained SAE so that
it works on raw activations.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax
import numpy as np

from superjax import _checks


def open_array(path: str | pathlib.Path, *, key: str | None = None) -> np.ndarray:
    """Memory-maps a 2-D float activation array from .npy, or reads one tensor of .safetensors.

    Safetensors files are memory-mapped by the ``safetensors`` numpy loader. ``key`` names the
    tensor when the file holds several.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"activation file {path} does not exist")
    if path.suffix == ".npy":
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise ValueError(f"{path} is not a .npy file (no NumPy header); save the "
                                 "activations with numpy.save")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"cannot read {path} as .npy: {err}") from None
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                names = list(fh.keys())
                if key is None and len(names) != 1:
                    raise ValueError(f"{path} holds tensors {names}; name one with key=")
                arr = fh.get_tensor(key or names[0])
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read {path} as .safetensors: {err}") from None
    else:
        raise ValueError(f"activation files must end in .npy or .safetensors, got {path.name}")
    if arr.ndim != 2:
        raise ValueError(f"activations must be a 2-D array (samples, M); {path.name} has shape "
                         f"{arr.shape}")
    if arr.dtype.kind != "f":
        raise ValueError(f"activations must be floating point; {path.name} has dtype {arr.dtype}")
    if arr.shape[0] < 2:
        raise ValueError(f"{path.name} holds {arr.shape[0]} sample(s); need at least 2")
    return arr


def check_finite(arr: np.ndarray, chunk: int = 1 << 16) -> None:
    """Scans the array in chunks; names the first row holding NaN or Inf."""
    for start in range(0, arr.shape[0], chunk):
        block = np.asarray(arr[start:start + chunk])
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise ValueError(f"activations contain NaN or Inf (first at row {row}); clean them "
                             "first")


class Stream(NamedTuple):
    """A resumable shuffled stream over rows [0, rows) of an activation array."""

    array: np.ndarray
    rows: int
    batch_size: int
    chunk: int
    buffer_chunks: int
    scale: float
    seed: int

    def window(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch-window index, row ids of the chunks loaded for ``step``)."""
        chunks = max(1, self.rows // self.chunk)
        per_window = max(1, self.buffer_chunks * self.chunk // self.batch_size)
        w = step // per_window
        windows_per_epoch = max(1, -(-chunks // self.buffer_chunks))
        epoch, slot = divmod(w, windows_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(chunks)
        picked = np.sort(order[slot * self.buffer_chunks:(slot + 1) * self.buffer_chunks])
        rows = (picked[:, None] * self.chunk + np.arange(self.chunk)).reshape(-1)
        return w, rows[rows < self.rows]

    def __call__(self, step: int) -> np.ndarray:
        """The (scaled, float32) batch of ``step``."""
        _, rows = self.window(step)
        pick = np.asarray(jax.random.randint(jax.random.fold_in(jax.random.key(self.seed), step),
                                             (self.batch_size,), 0, len(rows)))
        idx = np.sort(rows[pick])  # sorted reads are sequential on a memory map
        return np.asarray(self.array[idx], np.float32) * self.scale


def mean_norm_scale(arr: np.ndarray, rows: int, sample: int = 65536, seed: int = 0) -> float:
    """Factor that makes the mean row norm √M, estimated on up to ``sample`` rows."""
    idx = np.sort(np.random.default_rng(seed).choice(rows, min(rows, sample), replace=False))
    norms = np.linalg.norm(np.asarray(arr[idx], np.float64), axis=1)
    mean = float(norms.mean())
    if not mean > 0:
        raise ValueError("activations are all zero; nothing to learn")
    return float(np.sqrt(arr.shape[1]) / mean)


def stream(arr: np.ndarray, *, rows: int, batch_size: int, seed: int = 0, chunk: int = 4096,
           buffer_chunks: int = 16, normalise: bool = True) -> Stream:
    """A :class:`Stream` over the first ``rows`` rows (the rest is kept for evaluation)."""
    _checks.positive_int("rows", rows, minimum=2, maximum=arr.shape[0])
    _checks.positive_int("batch_size", batch_size)
    chunk = min(_checks.positive_int("chunk", chunk), rows)
    scale = mean_norm_scale(arr, rows, seed=seed) if normalise else 1.0
    return Stream(arr, rows, batch_size, chunk, _checks.positive_int("buffer_chunks",
                                                                     buffer_chunks), scale, seed)


def fold_scale(model, scale: float) -> None:
    """Rewrites an SAE with a linear encoder, trained on s·x, to act on raw x with equal codes.

    With x' = s·x: W_encᵀ(x' − b_dec) = (s·W_enc)ᵀ(x − b_dec/s) and x̂ = x̂'/s, so W_enc → s·W_enc,
    b_dec → b_dec/s, W_dec → W_dec/s; b_enc and JumpReLU thresholds act on pre-activations and
    stay. (Decoder rows then have norm 1/s, which SAELens accepts.)
    """
    if model.config.encoder != "linear":
        raise ValueError("folding the input scale needs a linear encoder (relu, topk, batchtopk, "
                         f"jumprelu); got encoder {model.config.encoder!r}")
    model.W_enc[...] = model.W_enc[...] * scale
    model.W_dec[...] = model.W_dec[...] / scale
    model.b_dec[...] = model.b_dec[...] / scale
