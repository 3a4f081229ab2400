"""Caches kept in the registry: model answers and image embeddings."""


class CacheRows:
    """What is recomputable but slow: the base model's answers and image embeddings."""

    # -- answers ------------------------------------------------------------------------

    def cached_answer(self, sha256: str, model: str, prompt: str) -> str | None:
        row = next(self.db["answers"].rows_where("sha256 = ? AND model = ? AND prompt = ?", [sha256, model, prompt],
                                                 select="answer"), None)
        return row["answer"] if row else None

    def store_answer(self, sha256: str, model: str, prompt: str, answer: str) -> None:
        with self.transaction() as db:
            db["answers"].insert({"sha256": sha256, "model": model, "prompt": prompt, "answer": answer}, replace=True)

    def answers(self, shas: list[str] | None = None) -> list[list[str]]:
        """[sha256, model, prompt, answer] of every cached answer, or of those about `shas`."""
        if shas is None:
            return [list(row) for row in self.db.execute("SELECT sha256, model, prompt, answer FROM answers")]
        found = []
        for start in range(0, len(shas), 500):
            chunk = shas[start : start + 500]
            found += [list(row) for row in self.db.execute(
                f"SELECT sha256, model, prompt, answer FROM answers WHERE sha256 IN ({','.join('?' * len(chunk))})", chunk)]
        return found

    def answer_count(self, concept_id: int, model: str, prompts: list[str]) -> int:
        """How many non-empty answers `model` has given to `prompts` about the concept's photos."""
        marks = ",".join("?" * len(prompts))
        return self.db.execute(
            f"SELECT count(*) FROM answers a JOIN concept_photos cp ON cp.sha256 = a.sha256 WHERE cp.concept_id = ? "
            f"AND a.model = ? AND a.answer != '' AND a.prompt IN ({marks})",
            [concept_id, model, *prompts],
        ).fetchone()[0]

    # -- embeddings ---------------------------------------------------------------------

    def embeddings(self, embedder: str, shas: list[str]) -> dict[str, bytes]:
        """The cached vectors (float32, little endian) of those photos that have one, read 500 at a
        time to stay under SQLite's limit on query parameters."""
        found = {}
        for start in range(0, len(shas), 500):
            chunk = shas[start : start + 500]
            rows = self.db.execute(
                f"SELECT sha256, vector FROM embeddings WHERE embedder = ? AND sha256 IN ({','.join('?' * len(chunk))})",
                [embedder, *chunk],
            )
            found.update({sha: blob for sha, blob in rows})
        return found

    def embedders(self) -> list[str]:
        """The embedders that have cached vectors here."""
        return [row[0] for row in self.db.execute("SELECT DISTINCT embedder FROM embeddings")]

    def store_embeddings(self, embedder: str, vectors: dict[str, bytes]) -> None:
        """Cache {sha256: float32 little-endian vector}, replacing earlier ones."""
        with self.transaction() as db:
            db["embeddings"].insert_all(
                ({"sha256": sha, "embedder": embedder, "dim": len(blob) // 4, "vector": blob} for sha, blob in vectors.items()),
                replace=True,
            )
