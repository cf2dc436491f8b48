"""How many intra-op threads a process takes, so that loaders and compute share the cores."""

from __future__ import annotations

import os

import torch

#: environment variable that sets the intra-op threads of every segfm process
THREADS_ENV = "SEGFM_NUM_THREADS"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_budget(num_workers: int, processes: int = 1, cores: int | None = None) -> int:
    """Intra-op threads of each training process so that threads + loader workers fit the cores.

    Each of ``processes`` processes on the machine gets an equal share of the cores, less one
    core per loader worker of its own (PyTorch runs each worker with one thread); at least one.

    Args:
        num_workers: Loader worker processes of each training process.
        processes: Training processes on this machine (DDP on CPU: the devices).
        cores: Cores to share; default :func:`available_cores`.

    Returns:
        The thread count.
    """
    share = (cores or available_cores()) // max(1, processes)
    return max(1, share - max(0, num_workers))


def apply_thread_budget(num_workers: int, processes: int = 1) -> tuple[int, str]:
    """Set torch's intra-op threads: ``$SEGFM_NUM_THREADS``, ``$OMP_NUM_THREADS`` or the budget.

    Returns:
        The thread count and where it came from (for the log line).
    """
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                msg = f"{name}={value!r} is not a whole number of threads; unset it or give one"
                raise ValueError(msg) from None
            if threads < 1:
                msg = f"{name}={value!r} must be >= 1; unset it or give a thread count"
                raise ValueError(msg)
            torch.set_num_threads(threads)
            return threads, f"${name}"
    threads = thread_budget(num_workers, processes)
    torch.set_num_threads(threads)
    return threads, f"{available_cores()} cores, {num_workers} loader workers"
