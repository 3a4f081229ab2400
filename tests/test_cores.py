"""torch's thread count follows the cores other jobs leave idle."""

import os
import subprocess
import sys

from yollava_cli.models import cores


def test_busy_cores_are_the_other_runnable_tasks_and_one_thread_always_remains(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(cores, "LOADAVG", loadavg)
    for running, expected in [(1, 4), (2, 3), (4, 1), (9, 1)]:
        loadavg.write_text(f"3.90 3.10 2.00 {running}/512 4242\n")  # a high load average alone changes nothing
        assert cores.idle_cores() == expected
    loadavg.unlink()  # no /proc (not Linux): every core
    assert cores.idle_cores() == 4


def test_a_users_omp_num_threads_is_kept(tmp_path):
    busy = tmp_path / "loadavg"
    busy.write_text("0.00 0.00 0.00 50/512 4242\n")
    code = (f"import torch; from yollava_cli.models import cores; cores.LOADAVG = cores.Path({str(busy)!r})\n"
            "before = torch.get_num_threads(); cores.use_idle_cores(); print(before, torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split() == ["2", "2"]
    env.pop("OMP_NUM_THREADS")
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()[1] == "1"


def test_the_thread_count_is_set_once_per_process(tmp_path):
    """A second model load in the same process (ask --image loads the embedder after the model)
    keeps the count the first chose, though this process's own threads now look busy."""
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.00 0.00 0.00 1/512 4242\n")
    code = (f"import torch; from yollava_cli.models import cores; cores.LOADAVG = cores.Path({str(loadavg)!r})\n"
            "before = torch.get_num_threads(); cores.use_idle_cores(); first = torch.get_num_threads()\n"
            "cores.LOADAVG.write_text('0.00 0.00 0.00 50/512 4242\\n'); cores.use_idle_cores()\n"
            "print(before, first, torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    before, first, second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()
    assert int(before) > 1 and first == before and second == first  # all cores idle, then still all
