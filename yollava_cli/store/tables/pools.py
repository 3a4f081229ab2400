"""Negative pools' rows."""

from collections.abc import Iterable

from yollava_cli.store.connection import now


class PoolRows:
    """Negative pools and the files each one was last seen to hold."""

    # -- pools --------------------------------------------------------------------------

    def pool(self, name: str) -> dict | None:
        return next(self.db["pools"].rows_where("name = ?", [name]), None)

    def pool_names(self) -> list[str]:
        return [r["name"] for r in self.db["pools"].rows_where(select="name")]

    def pool_summaries(self) -> list[dict]:
        """Every pool with its photo count, by name (what `pool list` shows)."""
        return [dict(r) for r in self.db.query(
            "SELECT p.name, p.path, count(f.path) AS photos, p.created_at FROM pools p "
            "LEFT JOIN pool_files f ON f.pool_id = p.id GROUP BY p.id ORDER BY p.name"
        )]

    def create_pool(self, name: str, path: str) -> None:
        with self.transaction() as db:
            db["pools"].insert({"name": name, "path": path, "created_at": now()})

    def delete_pool(self, pool_id: int) -> None:
        with self.transaction() as db:
            db["pools"].delete_where("id = ?", [pool_id])  # cascades to its files

    def pool_files(self, pool_id: int) -> list[dict]:
        return list(self.db["pool_files"].rows_where("pool_id = ?", [pool_id]))

    def update_pool_files(self, pool_id: int, vanished: Iterable[str], changed: list[dict]) -> None:
        """Drop the files gone from the pool's folder; store ({path, sha256, size, mtime}) new or changed ones."""
        with self.transaction() as db:
            for path in vanished:
                db["pool_files"].delete_where("pool_id = ? AND path = ?", [pool_id, path])
            db["pool_files"].insert_all(({**row, "pool_id": pool_id} for row in changed), replace=True)
