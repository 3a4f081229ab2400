"""How many CPU threads torch runs on: the cores other jobs leave idle."""

import functools
import os
from contextlib import contextmanager
from pathlib import Path

import torch

LOADAVG = Path("/proc/loadavg")


def busy_cores() -> int:
    """Other tasks running right now: the kernel's count of runnable tasks, less this one. Not the
    load average: it remembers the last minute, so a command run just after another would count
    the finished one as busy."""
    try:
        running = int(LOADAVG.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):  # not Linux
        return 0
    return max(0, running - 1)


def idle_cores() -> int:
    """Cores this process may use, less the busy ones; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - busy_cores())


@functools.cache
def use_idle_cores() -> None:
    """Run torch on the idle cores, unless OMP_NUM_THREADS chose. A parallel op waits for all of its
    threads to be scheduled, so a thread on a core another job holds costs more than it gives.
    Process-wide, so it is set once: at the first model or embedder load (a later load must not
    shrink it again because this process's own work now keeps the cores busy)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(min(torch.get_num_threads(), idle_cores()))


@contextmanager
def one_thread():
    """Run a block on one torch thread, restoring the count after: for many small memory-bound ops
    (a model's weights being prepared), which a second thread barely speeds up but each of which
    waits for every thread to be scheduled on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
