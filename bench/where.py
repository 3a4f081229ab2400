"""Where a benchmark ran, for every bench/results file: the CPU, the flags that decide its compute
policy, whether it has native bf16, torch's threads and version, and the policy in force. Users'
CPUs differ from this machine's (most lack native bf16), so a figure without its CPU misleads."""

import os


def where() -> dict:
    import torch

    from yollava_cli.models.compute import current_policy, detect

    capability = detect()
    described = capability.describe()
    return {"cpu": capability.cpu_model, "cpu_flags": described["cpu_flags"], "native_bf16": capability.native_bf16,
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "policy": current_policy().summary()}
