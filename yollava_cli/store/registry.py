"""The registry: a SQLite database (registry.db) plus a content-addressed photo store.

Every change goes through `Registry.transaction()` (BEGIN IMMEDIATE, so concurrent writers
queue on the busy timeout instead of failing) and files are written atomically before the
rows that point at them, so a crash leaves at worst an unreferenced file, never a row that
points at nothing. The tables' methods live in store/tables/, one group a module.
"""

from yollava_cli.store.connection import (
    BUSY_TIMEOUT_S,
    Connection,
    DamagedRegistry,
    now,
)
from yollava_cli.store.tables.caches import CacheRows
from yollava_cli.store.tables.concepts import ConceptRows
from yollava_cli.store.tables.photos import PhotoRows
from yollava_cli.store.tables.pools import PoolRows
from yollava_cli.store.tables.runs import RunRows

__all__ = ["BUSY_TIMEOUT_S", "DamagedRegistry", "Registry", "now"]


class Registry(Connection, PhotoRows, ConceptRows, PoolRows, CacheRows, RunRows):
    """Open (creating and migrating if needed) the registry under `root`: one connection and one
    transaction shared by every table group."""
