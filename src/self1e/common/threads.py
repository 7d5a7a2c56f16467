"""CPU thread settings that hold up on a busy machine and stay fast on an idle one.

On a CPU shared with other work, OpenMP threads that spin while they wait for each other (libgomp's
default) lose their time slices to the other processes and wait for one another: a small model
then runs 10-20x slower than on one thread. The settings here:

- **Wait policy.** ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning) is set when
  ``self1e`` is imported, unless the environment already sets it; OpenMP reads it once, when torch
  first loads it, so it only takes effect when ``self1e`` is imported before torch (the command
  line always is).
- **Thread count.** :func:`choose_threads`: ``--threads N`` (or ``$SELF1E_THREADS``) wins; otherwise
  one thread for a small model (under ``SMALL_MODEL_PARAMS`` parameters: the shipped model is 0.75 M,
  whose matrices are too small for threads to pay), and every CPU this process may use for a larger
  one. ``0`` leaves torch's own choice (for comparisons).
- **Inter-op threads.** One: the models here have no independent branches to run in parallel.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
THREADS_ENV = "SELF1E_THREADS"
SMALL_MODEL_PARAMS = 20_000_000


def prepare_openmp() -> None:
    """Before torch is imported: threads that sleep while they wait (see the module docstring)."""
    if os.environ.get(THREADS_ENV, "").strip() != "0":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def requested_threads(threads: int | None = None) -> int | None:
    """``threads``, else ``$SELF1E_THREADS``, else None (choose by model size). ValueError when not
    a whole number >= 0."""
    source = "--threads"
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return None
        source = THREADS_ENV
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a whole number of threads (0 = torch's default), "
                             f"got {raw!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"{source} must be a whole number >= 0 (0 = torch's default), got {threads!r}")
    return threads


def choose_threads(n_params: int, threads: int | None = None) -> int | None:
    """The intra-op thread count for a model of ``n_params`` parameters (None: leave torch's)."""
    wanted = requested_threads(threads)
    if wanted == 0:
        return None
    if wanted is not None:
        return wanted
    return 1 if n_params < SMALL_MODEL_PARAMS else available_cpus()


def apply_threads(n_params: int, threads: int | None = None) -> int:
    """Set torch's threads for a CPU model of ``n_params`` parameters; returns the count in force."""
    import torch

    count = choose_threads(n_params, threads)
    if count is not None:
        torch.set_num_threads(count)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # inter-op work already ran in this process: it can no longer change
            pass
    log.debug("CPU threads: %d (wait policy %s)", torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "default"))
    return torch.get_num_threads()
