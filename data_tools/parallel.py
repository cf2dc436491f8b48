"""Run a tool's jobs on every core, with a progress bar (in this process when one worker)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

J = TypeVar("J")
R = TypeVar("R")


def worker_count(workers: int | None, jobs: int) -> int:
    """``workers`` (all cores when None), at most one per job and at least one."""
    return max(1, min((os.cpu_count() or 1) if workers is None else workers, jobs))


def _one_thread() -> None:
    """Pool initializer: one torch thread per process, the processes use the cores."""
    import torch

    torch.set_num_threads(1)


def run_jobs(
    fn: Callable[[J], R],
    jobs: list[J],
    workers: int | None = None,
    desc: str | None = None,
    progress: bool | None = True,
    ordered: bool = False,
) -> Iterator[R]:
    """The results of ``fn`` over ``jobs``, computed on :func:`worker_count` processes.

    Args:
        fn: A picklable function of one job.
        jobs: The jobs.
        workers: Processes; None for every core, 1 (or one job) runs in this process.
        desc: Label of the progress bar.
        progress: Show the bar (None: only on a terminal, as tqdm's ``disable=None``).
        ordered: Yield in the order of ``jobs`` (else as they finish).

    Yields:
        One result per job.
    """
    count = worker_count(workers, len(jobs))
    bar: Callable[[Iterable[R]], Iterable[R]] = lambda results: tqdm(  # noqa: E731
        results, total=len(jobs), desc=desc, disable=None if progress is None else not progress
    )
    if count == 1:
        yield from bar(map(fn, jobs))
        return
    with multiprocessing.Pool(count, _one_thread) as pool:
        results = pool.imap(fn, jobs) if ordered else pool.imap_unordered(fn, jobs)
        yield from bar(results)
