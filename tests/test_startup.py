"""Commands that load no model must not pay for importing torch and transformers (~1.5 s on 2
cores), nor numpy: `--help`, `list` and `show` start in ~0.3 s (bench/bench_startup.py)."""

import os
import subprocess
import sys

import pytest

HEAVY = {"torch", "transformers"}
NOT_NEEDED = {"numpy"}  # sqlite_utils imports it only for numpy column types (bench_startup: a third of `list`)


def test_importing_the_cli_imports_no_model_library():
    check = f"import sys, yollava_cli.cli; assert not {HEAVY!r} & set(sys.modules), {HEAVY!r} & set(sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args", [["--help"], ["list"], ["show", "bo"]])
def test_commands_that_load_no_model_import_no_model_library(home, args):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "yollava_cli", *args],
                            capture_output=True, text=True, env={**os.environ, "YOLLAVA_HOME": str(home)})
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not (HEAVY | NOT_NEEDED) & imported
