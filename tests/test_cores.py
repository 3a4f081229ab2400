"""torch's thread count follows the cores other jobs leave idle."""

import os
import subprocess
import sys

from yollava_cli import cores


def test_busy_cores_are_left_alone_and_one_thread_always_remains(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for load, expected in [(0.1, 4), (1.2, 3), (2.6, 1), (9.0, 1)]:
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert cores.idle_cores() == expected


def test_a_users_omp_num_threads_is_kept():
    code = ("import os, torch; os.getloadavg = lambda: (50.0, 50.0, 50.0)\n"
            "from yollava_cli.cores import use_idle_cores; before = torch.get_num_threads(); use_idle_cores()\n"
            "print(before, torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split() == ["2", "2"]
    env.pop("OMP_NUM_THREADS")
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()[1] == "1"
