"""Negative pools and mining: the photos that teach a concept what it is *not* (paper sec. 3.2).

Hard negatives are the pool photos most similar to the concept's own photos (round-robin over
its photos, so every view contributes); easy negatives are a seeded random draw of the rest.
Pool photos nearly identical to the concept's photos are probably the subject itself and are
left out. Chosen negatives are copied into the photo store, so training never depends on the
pool folder still being there.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from yollava_cli.config import load_config
from yollava_cli.errors import UserError
from yollava_cli.learning.embeddings import Embedder, PhotoFile, embed_photos
from yollava_cli.learning.events import EmbeddingPool, EmbeddingToMine, ScanningPool
from yollava_cli.reporting import Status, report
from yollava_cli.store.concepts import get_concept, require_photos
from yollava_cli.store.fileio import path_text
from yollava_cli.store.photos import (
    BadPhoto,
    check_regular,
    expand_photo_paths,
    jpeg_bytes,
    photo_sha256,
    read_photo,
)
from yollava_cli.store.pools import checked_new_pool, pool_by_name
from yollava_cli.store.records import Concept
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus, NegativeKind

MIN_CONCEPT_POOL = 20  # other concepts' photos stand in for a pool only when there are this many
SEARCH_CHUNK = 65536  # pool rows per matrix product: bounded memory for any pool size
EMBED_SIDE = 512  # photos are decoded at this size for embedding; embedders look at <= 256 px


@dataclass
class Candidate:
    sha256: str
    source: str  # where the photo came from: a pool file or a stored concept photo
    load: Callable[[], object]


@dataclass
class MineResult:
    concept: str
    embedder: str
    negatives: list[dict]
    excluded_near_duplicates: list[dict] = field(default_factory=list)  # {"photo", "score"}: probably the concept itself
    candidates: int = 0
    newly_embedded: int = 0
    source: str = ""
    dropped: list[dict] = field(default_factory=list)  # chosen but not storable: {"photo", "reason"}

    def to_json(self) -> dict:
        """What `mine --json` prints: the fields, in their order, are the keys."""
        return asdict(self)


# -- pools ------------------------------------------------------------------------------


def add_pool(registry: Registry, name: str, folder: Path, embedder: Embedder) -> dict:
    """Register a folder of everyday photos as a negative pool and embed it. A new pool is
    registered with its files in one transaction once the folder is scanned, so an interrupted
    scan (Ctrl-C in `pool add /`) leaves no empty pool behind. It reports ScanningPool (photos found
    so far, total None; then photos checked of all found), then EmbeddingPool."""
    folder = checked_new_pool(name, folder)
    existing = registry.pool(name)
    if existing and existing["path"] != str(folder):
        raise UserError(f"pool {name!r} already points at {existing['path']}; `yollava pool rm {name}` first")
    candidates, skipped = scan_pool(registry, existing or {"id": None, "name": name, "path": str(folder)})
    vectors, embedded = embed_photos(registry, embedder, {c.sha256: c.load for c in candidates}, EmbeddingPool)
    return {"pool": name, "path": str(folder), "photos": len(candidates), "embedded": embedded,
            "unreadable": len(candidates) - len(vectors) + len(skipped), "embedder": embedder.id,
            "skipped": skipped}


def scan_pool(registry: Registry, pool: dict) -> tuple[list[Candidate], list[dict]]:
    """Bring the pool's file list up to date: unchanged files keep their hash, new or changed files
    are hashed, vanished files are dropped, files photo intake refuses are skipped ({"path" in the
    folder, "reason"}). A pool whose folder lost files keeps working. A folder
    that yields no photo at all while rows exist (an unmounted drive) keeps its rows and is skipped.
    A pool not registered yet (id None) is registered with its files, if it has any."""
    folder = Path(pool["path"])
    if not folder.is_dir():
        raise UserError(f"pool {pool['name']!r}: folder {folder} is gone; `yollava pool rm {pool['name']}` or restore it")
    known = {r["path"]: r for r in registry.pool_files(pool["id"])} if pool["id"] is not None else {}
    try:
        paths = expand_photo_paths([folder], on_found=lambda found: report(ScanningPool(found, None)))
    except UserError:
        if pool["id"] is None:
            raise
        paths = []
    current, skipped, files = {}, [], {}
    for done, path in enumerate(paths, 1):
        rel = path_text(path.relative_to(folder))  # a name that is not UTF-8 is stored escaped
        files[rel] = path
        try:  # through photo intake's checks: a FIFO, a device or a huge file is skipped, never read
            stat = path.stat()
            check_regular(stat)
            row = known.get(rel)
            if row and row["size"] == stat.st_size and row["mtime"] == stat.st_mtime:
                current[rel] = row
            else:
                current[rel] = {"path": rel, "sha256": photo_sha256(path), "size": stat.st_size, "mtime": stat.st_mtime}
        except BadPhoto as e:
            skipped.append({"path": rel, "reason": str(e)})
        except OSError as e:
            skipped.append({"path": rel, "reason": f"cannot read it ({e.strerror or e})"})
        report(ScanningPool(done, len(paths)))
    if not current and pool["id"] is None:
        raise UserError(f"{folder}: no usable photo to make a pool of (e.g. {skipped[0]['path']}: {skipped[0]['reason']})")
    if known and not current:
        report(Status(f"pool {pool['name']!r}: no photos in {folder} now (an unmounted drive?); "
                      f"kept its {len(known)} known files and skipped it this time"))
        return [], skipped
    changed = [row for rel, row in current.items() if known.get(rel) != {**row, "pool_id": pool["id"]}]
    with registry.transaction():
        pool_id = pool["id"] if pool["id"] is not None else new_pool_id(registry, pool["name"], str(folder))
        registry.update_pool_files(pool_id, known.keys() - current.keys(), changed)
    candidates = [Candidate(row["sha256"], str(files[rel]), file_loader(files[rel])) for rel, row in current.items()]
    return candidates, skipped


def new_pool_id(registry: Registry, name: str, folder: str) -> int:
    """Inside the caller's transaction: the pool `name` for `folder`, created now unless another
    `pool add` of the same folder got there first."""
    existing = registry.pool(name)
    if existing and existing["path"] != folder:
        raise UserError(f"pool {name!r} already points at {existing['path']}; `yollava pool rm {name}` first")
    if not existing:
        registry.create_pool(name, folder)
    return registry.pool(name)["id"]


def file_loader(path: Path) -> PhotoFile:
    return PhotoFile(path, EMBED_SIDE)


# -- mining -----------------------------------------------------------------------------


def top_k(queries: np.ndarray, matrix: np.ndarray, k: int, chunk: int = SEARCH_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k of each query over the rows of `matrix` (float16/32, in RAM or memory-mapped),
    one matrix product per chunk of rows: (scores, indices), each (n_queries, k), best first."""
    queries = np.asarray(queries, dtype=np.float32)
    k = min(k, len(matrix))
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_index = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(matrix), chunk):
        scores = queries @ np.asarray(matrix[start : start + chunk], dtype=np.float32).T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
        best_index = np.concatenate([best_index, part + start], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, 1)
            best_index = np.take_along_axis(best_index, keep, 1)
    order = np.argsort(-best_scores, axis=1)
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_index, order, 1)


def select_negatives(queries: np.ndarray, matrix: np.ndarray, hard: int, easy: int, seed: int,
                     duplicate_above: float) -> tuple[list[tuple[int, float]], list[int], list[tuple[int, float]]]:
    """(hard [(row, score)], easy [row], near-duplicates [(row, score)]) over the candidate rows."""
    scores, index = top_k(queries, matrix, hard + 64)
    duplicates = {}
    for row, score in zip(index.ravel(), scores.ravel()):
        if score >= duplicate_above:
            duplicates[int(row)] = max(float(score), duplicates.get(int(row), -1.0))
    chosen: dict[int, float] = {}
    for rank in range(scores.shape[1]):  # round-robin over the concept's photos, best first
        for q in range(len(queries)):
            row, score = int(index[q, rank]), float(scores[q, rank])
            if len(chosen) < hard and row not in duplicates and row not in chosen:
                chosen[row] = score
    rest = np.array(sorted(set(range(len(matrix))) - chosen.keys() - duplicates.keys()), dtype=np.int64)
    rng = np.random.default_rng(seed)
    easy_rows = rng.choice(rest, size=min(easy, len(rest)), replace=False).tolist() if len(rest) else []
    return list(chosen.items()), sorted(easy_rows), sorted(duplicates.items(), key=lambda x: -x[1])


def mine(registry: Registry, raw_name: str, embedder: Embedder, pools: list[str] | None = None,
         hard: int = 100, easy: int = 100, seed: int = 0, duplicate_above: float | None = None) -> MineResult:
    """Choose and store a concept's hard and easy negatives (replacing earlier ones)."""
    concept = get_concept(registry, raw_name)
    require_photos(registry, concept)
    own = {p.sha256: registry.root / p.file for p in registry.concept_photos(concept.id)}
    candidates, source = gather_candidates(registry, concept, pools)
    candidates = [c for c in candidates if c.sha256 not in own]
    loaders = {sha: file_loader(path) for sha, path in own.items()}
    loaders.update({c.sha256: c.load for c in candidates})
    vectors, embedded = embed_photos(registry, embedder, loaders, EmbeddingToMine)
    candidates = list({c.sha256: c for c in candidates if c.sha256 in vectors}.values())
    if not candidates:
        raise UserError(f"no readable photos to mine negatives from ({source})")
    queries = np.stack([vectors[sha] for sha in own if sha in vectors])
    matrix = np.stack([vectors[c.sha256] for c in candidates])
    duplicate_above = embedder.duplicate_above if duplicate_above is None else duplicate_above
    hard_rows, easy_rows, duplicate_rows = select_negatives(queries, matrix, hard, easy, seed, duplicate_above)
    if not hard_rows and not easy_rows:
        raise UserError(
            f"all {len(candidates)} candidate photos look like <{concept.name}> itself (similarity >= "
            f"{duplicate_above}): use a pool of other photos, or a higher --duplicate-above"
        )
    picked = [(candidates[r], NegativeKind.HARD, s) for r, s in hard_rows]
    picked += [(candidates[r], NegativeKind.EASY, float((queries @ matrix[r]).max())) for r in easy_rows]
    result = store_negatives(registry, concept, picked, embedder.id)
    if embedder.note:
        report(Status(embedder.note))
    if result.dropped:
        report(Status(f"dropped {len(result.dropped)} chosen negative(s) that could not be stored: "
                      + "; ".join(f"{d['photo']} ({d['reason']})" for d in result.dropped)))
    result.excluded_near_duplicates = [{"photo": path_text(candidates[r].source), "score": round(s, 4)} for r, s in duplicate_rows]
    result.candidates, result.newly_embedded, result.source = len(candidates), embedded, source
    return result


def gather_candidates(registry: Registry, concept: Concept, pools: list[str] | None) -> tuple[list[Candidate], str]:
    """The chosen pools, else the configured default pools, else every pool, else other concepts' photos."""
    names = pools or load_config().get("default_pools") or registry.pool_names()
    if names:
        candidates = []
        for name in names:
            found, skipped = scan_pool(registry, pool_by_name(registry, name))
            candidates += found
            if skipped:
                report(Status(f"pool {name!r}: skipped {len(skipped)} file(s) that are not usable photos, e.g. "
                              f"{skipped[0]['path']} ({skipped[0]['reason']}); `yollava pool add {name} DIR` lists them all"))
        return candidates, f"pool {', '.join(names)}"
    others = registry.other_concepts_photos(concept.id)
    if len(others) < MIN_CONCEPT_POOL:
        raise UserError(
            f"no pool to mine negatives for <{concept.name}> from: add a folder of everyday photos (your photo "
            f"library is best) with `yollava pool add NAME DIR`, then `yollava train {concept.name}`"
        )
    report(Status(f"No pool registered: mining among your other concepts' {len(others)} photos"))
    return [Candidate(p.sha256, str(registry.root / p.file), file_loader(registry.root / p.file)) for p in others], "other concepts"


def store_negatives(registry: Registry, concept: Concept, picked: list, embedder_id: str) -> MineResult:
    """Copy the chosen photos into the store and replace the concept's negatives in one transaction."""
    ready, dropped = [], []
    for candidate, kind, score in picked:
        if registry.photo(candidate.sha256):
            ready.append((candidate, kind, score, None))  # already stored (another concept's photo)
            continue
        try:
            photo = read_photo(Path(candidate.source))
        except BadPhoto as e:  # vanished or broken since it was embedded: fewer negatives, never a bad one
            dropped.append({"photo": path_text(candidate.source), "reason": str(e)})
            continue
        if photo.sha256 == candidate.sha256:
            ready.append((candidate, kind, score, photo))
        else:
            dropped.append({"photo": path_text(candidate.source), "reason": "changed since it was embedded"})
    encoded = {c.sha256: jpeg_bytes(p.image) for c, _, _, p in ready if p is not None}
    with registry.transaction():
        for candidate, kind, score, photo in ready:
            if photo is not None:
                registry.store_photo(candidate.sha256, encoded[candidate.sha256], *photo.image.size)
        old = registry.replace_negatives(concept.id, [(c.sha256, kind, score, path_text(c.source))
                                                         for c, kind, score, _ in ready], embedder_id)
        registry.set_concept_status(concept.id, ConceptStatus.MINED)
        removed = registry.delete_unused_photos(old)
    registry.unlink_photo_files(removed)
    negatives = [{"photo": path_text(c.source), "kind": kind, "score": round(score, 4)} for c, kind, score, _ in ready]
    return MineResult(concept.name, embedder_id, negatives, dropped=dropped)
