"""How many CPU threads torch runs on: the cores other jobs leave idle."""

import os


def idle_cores() -> int:
    """Cores this process may use, less the ones the last minute's load says are busy; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy))


def use_idle_cores() -> None:
    """Run torch on the idle cores, unless OMP_NUM_THREADS chose. A parallel op waits for all of its
    threads to be scheduled, so a thread on a core another job holds costs more than it gives: with
    one of 2 cores busy, pocket's answers came 1.5-3x slower on 2 threads than on 1 and its load
    ~10x; on a quiet machine 2 threads decode ~1.35x faster than 1."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(min(torch.get_num_threads(), idle_cores()))
