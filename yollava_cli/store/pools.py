"""Negative pools in the registry: their names and removal. Embedding a pool's photos is
learning.mining's; this part needs no model, so `pool list` and `pool rm` start fast."""

import re
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.store.fileio import path_text
from yollava_cli.store.registry import Registry

POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def checked_new_pool(name: str, folder: Path) -> Path:
    """The folder a new pool `name` would read, resolved; refused before any embedder loads."""
    if not POOL_NAME.match(name):
        raise UserError(f"invalid pool name {name!r}: use letters, digits, '.', '-', '_' (e.g. library)")
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"{path_text(folder)}: not a folder; a pool is a folder of photos")
    if path_text(folder) != str(folder):  # the pool is found again by the path kept in the registry
        raise UserError(f"{path_text(folder)}: a pool folder's path must be valid UTF-8 (the escaped bytes); "
                        "rename the folder, or point a symlink with a plain name at it")
    return folder


def pool_by_name(registry: Registry, name: str) -> dict:
    pool = registry.pool(name)
    if pool is None:
        names = registry.pool_names()
        known = f" (pools: {', '.join(names)})" if names else "; add one with `yollava pool add NAME DIR`"
        raise UserError(f"unknown pool {name!r}{known}")
    return pool


def remove_pool(registry: Registry, name: str) -> dict:
    """Forget a pool; its folder and cached embeddings are left alone."""
    registry.delete_pool(pool_by_name(registry, name)["id"])
    return {"removed": name}
