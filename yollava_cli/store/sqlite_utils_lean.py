"""sqlite_utils, imported without numpy when numpy is not loaded yet: sqlite_utils imports numpy
only to map numpy scalars to column types, which the registry never stores, and on a command that
loads no model numpy was a third of the start-up (bench/bench_startup.py). Where numpy is loaded
already (a model command), sqlite_utils gets it as usual."""

import sys

if "numpy" in sys.modules or "sqlite_utils" in sys.modules:
    import sqlite_utils
else:
    sys.modules["numpy"] = None  # makes `import numpy` fail: sqlite_utils then goes without it
    try:
        import sqlite_utils
    finally:
        del sys.modules["numpy"]

__all__ = ["sqlite_utils"]
