"""What every benchmark shares: where it ran (every bench/results file records the CPU, the flags
that decide its compute policy, native bf16, torch's threads and version, and the policy in force:
users' CPUs differ from this machine's, most lack native bf16), and a median of timed runs."""

import os
import statistics
import time


def where() -> dict:
    import torch

    from yollava_cli.models.compute import current_policy, detect

    capability = detect()
    described = capability.describe()
    return {"cpu": capability.cpu_model, "cpu_flags": described["cpu_flags"], "native_bf16": capability.native_bf16,
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "policy": current_policy().summary()}


def median_time(fn, repeats: int, warm_up: bool = False) -> float:
    """The median of `repeats` timed calls; `warm_up` runs one untimed first (allocations, kernel choice)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
