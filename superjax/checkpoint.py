"""Checkpoints (orbax, kept behind this one module): save, restore, and refuse mismatches.

A checkpoint holds a pytree of arrays (train state, dead-latent statistics, data position, key
data) plus a JSON record of the configuration that produced it. Orbax writes each step to a
temporary directory and renames it when complete, so an interrupted save never replaces the last
good checkpoint; a step directory that cannot be read is reported with its path, and the earlier
checkpoints are left untouched.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, or from another configuration."""


class Checkpointer:
    """Saves and restores (state pytree, config dict) pairs under ``directory``.

    Args:
      directory: where step directories live (created if missing).
      max_to_keep: how many recent checkpoints to keep (≥ 2 keeps a good one while writing).
    """

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                  create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, config: dict[str, Any]) -> None:
        """Saves ``state`` at ``step`` with its configuration and waits until it is on disk."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config)))
        self._manager.wait_until_finished()

    def restore(self, like: Any, config: dict[str, Any], step: int | None = None
                ) -> tuple[int, Any]:
        """Restores the checkpoint at ``step`` (default: latest) into the structure of ``like``.

        Raises:
          CheckpointError: no checkpoint exists, it cannot be read, or it was written by a run
            with a different configuration (the differing keys are named).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        path = self.directory / str(step)
        try:
            saved = self._manager.restore(step, args=ocp.args.Composite(
                config=ocp.args.JsonRestore()))["config"]
        except Exception as err:  # orbax raises many types for damaged files
            raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: "
                                  f"{err}); delete it to resume from an earlier one") from None
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if diff:
            shown = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {config.get(k)!r}"
                              for k in diff[:5])
            raise CheckpointError(f"checkpoint {path} was written with another configuration "
                                  f"({shown}); use a new output directory or the same settings")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as err:
            raise CheckpointError(f"checkpoint {path} does not match the model's parameters "
                                  f"({type(err).__name__}: {err})") from None
        return step, restored

    def close(self) -> None:
        self._manager.close()
