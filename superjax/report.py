"""Run directories, JSON results, the environment stamp, and Markdown reports."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax


def environment() -> dict[str, str]:
    """Device and library versions, recorded with every result and benchmark."""
    import flax
    import numpy
    import optax

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", "")
    return {"device": dev.platform.upper() + (f" ({kind})" if kind != dev.platform else ""),
            "device_count": str(jax.device_count()), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": numpy.__version__}


def to_jsonable(x: Any) -> Any:
    """Converts arrays, tuples and NamedTuples to plain JSON values (non-finite floats → None)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return to_jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/Inf; null means "not identified"
    return x


def is_writer() -> bool:
    """Whether this process writes results: process 0 of a multi-process run (or the only one)."""
    return jax.process_index() == 0


def write_json(path: str | pathlib.Path, obj: Any) -> pathlib.Path:
    """Writes ``obj`` as indented, strict JSON (NaN/Inf become null); creates parent folders.
    In a multi-process run only process 0 writes (see :func:`is_writer`)."""
    path = pathlib.Path(path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves half a results file
    return path


def fmt(x: float | None, digits: int = 3) -> str:
    """Formats a number for a Markdown table; missing values print as an em dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
