"""SAELens-compatible export and import: ``sae_weights.safetensors`` + ``cfg.json``.

superjax SAEs already use SAELens' parameter names and layouts (W_enc: d_in × d_sae,
W_dec: d_sae × d_in, b_enc, b_dec, threshold), so a trained SAE loads in the PyTorch ecosystem
(``sae_lens.SAE.load_from_disk``) and a SAELens SAE loads here. ``cfg.json`` carries both the v6
field (``architecture`` with ``k``) and the older ``activation_fn_str``/``activation_fn_kwargs``.
"""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from superjax import models, report

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
_ARCHITECTURE = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}


def export_saelens(model: models.SparseAutoencoder, directory: str | pathlib.Path,
                   **metadata) -> pathlib.Path:
    """Writes ``model`` as a SAELens SAE folder; extra keyword arguments go into cfg.json.

    Only one-layer encoders with ReLU, TopK or JumpReLU latents have a SAELens counterpart.
    """
    from safetensors.numpy import save_file

    cfg = model.config
    if cfg.encoder != "linear" or cfg.activation not in _ARCHITECTURE:
        raise ValueError(f"SAELens has no counterpart for encoder={cfg.encoder!r} with "
                         f"activation={cfg.activation!r}; export supports one-layer relu, topk "
                         f"and jumprelu SAEs")
    directory = pathlib.Path(directory)
    if not report.is_writer():  # one writer in a multi-process run
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    names = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if cfg.activation == "jumprelu"
                                                    else [])
    tensors = {n: np.ascontiguousarray(np.asarray(getattr(model, n)[...], np.float32))
               for n in names}
    save_file(tensors, str(directory / WEIGHTS_FILE))
    kwargs = {"k": cfg.k} if cfg.activation == "topk" else {}
    record = {
        "architecture": _ARCHITECTURE[cfg.activation], "d_in": cfg.d_in, "d_sae": cfg.d_sae,
        "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "activation_fn_str": "topk" if kwargs else "relu",
        "activation_fn_kwargs": kwargs, **kwargs, "metadata": dict(metadata),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return directory


def import_saelens(directory: str | pathlib.Path) -> models.SparseAutoencoder:
    """Loads a SAELens SAE folder (standard/ReLU, TopK or JumpReLU) as a superjax SAE."""
    from safetensors.numpy import load_file

    directory = pathlib.Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise ValueError(f"{directory} is not a SAELens SAE folder: {name} is missing")
    try:
        record = json.loads((directory / CONFIG_FILE).read_text())
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (json.JSONDecodeError, OSError, Exception) as err:  # safetensors raises its own type
        raise ValueError(f"cannot read the SAE in {directory}: {err}") from None
    arch = record.get("architecture") or (
        "topk" if record.get("activation_fn_str") == "topk" else "standard")
    activation = {v: k for k, v in _ARCHITECTURE.items()}.get(arch)
    if activation is None:
        raise ValueError(f"unsupported SAELens architecture {arch!r} in {directory}; "
                         f"supported: {', '.join(_ARCHITECTURE.values())}")
    if record.get("apply_b_dec_to_input", True) is False:
        raise ValueError(f"{directory}: apply_b_dec_to_input = false is not supported")
    k = record.get("k") or (record.get("activation_fn_kwargs") or {}).get("k", 0)
    config = models.SAEConfig(d_in=int(record["d_in"]), d_sae=int(record["d_sae"]),
                              activation=activation, k=int(k or 0))
    model = models.SparseAutoencoder(config, rngs=nnx.Rngs(0))
    wanted = {"W_enc": (config.d_in, config.d_sae), "W_dec": (config.d_sae, config.d_in),
              "b_enc": (config.d_sae,), "b_dec": (config.d_in,)}
    if activation == "jumprelu":
        wanted["threshold"] = (config.d_sae,)
    for name, shape in wanted.items():
        if name not in tensors:
            raise ValueError(f"{directory / WEIGHTS_FILE} has no tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} in {directory / WEIGHTS_FILE} has shape "
                             f"{tuple(tensors[name].shape)}, cfg.json implies {shape}")
        getattr(model, name)[...] = jnp.asarray(tensors[name], jnp.float32)
    return model
