"""Test set-up: 4 simulated CPU devices, configured before JAX starts its backend.

The session's processes (pytest-xdist workers, and the fresh processes some tests start) share
one persistent XLA compilation cache in a temporary directory, so a program one of them compiled
is loaded by the others instead of compiled again. It starts empty, as on a clean CI machine.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    # The controller (or a plain pytest run) makes it; workers and subprocesses inherit it.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="superjax-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("XLA_FLAGS", "")
if "PYTEST_XDIST_WORKER" in os.environ and hasattr(os, "sched_setaffinity"):
    # Each xdist worker (and the processes it starts) gets its own share of the CPUs. XLA sizes
    # its thread pool by the CPUs a process may use, so two workers no longer run two pools on
    # the same cores, whose spinning threads slowed both.
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[int(os.environ["PYTEST_XDIST_WORKER"][2:])::
                 int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))]
    if share:
        os.sched_setaffinity(0, share)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)


def pytest_collection_modifyitems(items):
    # The main job end to end (`slow`: run by `make test-all`) is the longest test by far: start
    # it first, so the other workers share out the rest while it runs, not it alone at the end.
    items.sort(key=lambda item: item.path.name != "test_demo.py")
