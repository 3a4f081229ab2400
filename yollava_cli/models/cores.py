"""How many CPU threads torch runs on: the cores other jobs leave idle."""

import os
from contextlib import contextmanager
from pathlib import Path

import torch

LOADAVG = Path("/proc/loadavg")


def busy_cores() -> int:
    """Other tasks running right now: the kernel's count of runnable tasks, less this one. Not the
    load average: it remembers the last minute, so a command run just after another (`add`, then
    `ask`) counted the finished one and ran on one thread, 0.3-0.4 s slower to its first word."""
    try:
        running = int(LOADAVG.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):  # not Linux
        return 0
    return max(0, running - 1)


def idle_cores() -> int:
    """Cores this process may use, less the busy ones; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - busy_cores())


def use_idle_cores() -> None:
    """Run torch on the idle cores, unless OMP_NUM_THREADS chose. A parallel op waits for all of its
    threads to be scheduled, so a thread on a core another job holds costs more than it gives: with
    both of 2 cores busy, `ask` took 8.3-14.5 s to its first word on 2 threads and 6.8-6.9 s on 1,
    and loading pocket ~10x longer; on a quiet machine 2 threads decode ~1.35x faster than 1."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(min(torch.get_num_threads(), idle_cores()))


@contextmanager
def one_thread():
    """Run a block on one torch thread, restoring the count after. Preparing pocket's weights is
    ~1000 small memory-bound ops (copies, bf16 casts, LoRA merges): a second thread barely speeds
    them up on a quiet machine, but each op waits for both threads to be scheduled, so on a busy
    one (other jobs on the 2 cores) the load took 7 s instead of 0.6 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
