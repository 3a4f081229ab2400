"""`doctor`: check the registry against the files it points at, and repair what is safe to repair.

Safe repairs only drop what is already lost or never referenced: orphan and temporary files,
rows whose files are gone, runs left 'running' by a killed process. Nothing valid is deleted.
"""

from pathlib import Path

from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.facts import check_fact
from yollava_cli.migrations import MIGRATIONS
from yollava_cli.store import Registry, now


def problem(kind: str, detail: str) -> dict:
    return {"kind": kind, "detail": detail, "fixed": False}


def readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # any decoder failure means the stored file is damaged
        return False


def examine(registry: Registry, fix: bool = False) -> dict:
    db, root = registry.db, registry.root
    found = []
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        found.append(problem("database", f"SQLite integrity check: {integrity} (restore registry.db from a backup)"))

    bad_photos = [r["sha256"] for r in db.query("SELECT sha256, file FROM photos")
                  if not (root / r["file"]).is_file() or not readable(root / r["file"])]
    found += [problem("photo", f"stored photo {sha[:12]} is missing or damaged") for sha in bad_photos]
    known_files = {r["file"] for r in db.query("SELECT file FROM photos")}
    orphans = [p for p in (root / "photos").rglob("*") if p.is_file() and str(p.relative_to(root)) not in known_files]
    found += [problem("orphan", f"{p.relative_to(root)} is not in the registry") for p in orphans]

    lost_checkpoints = [dict(r) for r in db.query("SELECT id, concept_id, file FROM checkpoints") if not (root / r["file"]).is_file()]
    found += [problem("checkpoint", f"{r['file']} is missing") for r in lost_checkpoints]
    known_checkpoints = {r["file"] for r in db.query("SELECT file FROM checkpoints")}
    stray = [p for p in (root / "checkpoints").rglob("*.safetensors")
             if p.name != "resume.safetensors" and str(p.relative_to(root)) not in known_checkpoints]
    temporary = [p for pattern in ("*.tmp", "*.partial") for p in root.rglob(pattern)]
    found += [problem("orphan", f"{p.relative_to(root)} is not in the registry") for p in stray + temporary]

    stale_runs = [dict(r) for r in db.query(
        "SELECT r.id, c.name FROM runs r LEFT JOIN concepts c ON c.id = r.concept_id WHERE r.status = 'running'"
    ) if not running(registry, r["name"])]
    found += [problem("run", f"run {r['id']} ({r['name'] or 'eval'}) was left running by a process that died") for r in stale_runs]

    bad_facts = []  # written around `note` (by hand, an old tool): reported, never rewritten
    for r in registry.all_facts():
        try:
            check_fact(r["text"])
        except UserError as e:
            bad_facts.append(problem("fact", f"<{r['name']}>: {e} (see `yollava note {r['name']}`; remove it with --rm N)"))
    found += bad_facts

    if fix and found:
        with registry.transaction() as tx:
            for sha in bad_photos:
                concepts = [r[0] for r in tx.execute("SELECT concept_id FROM concept_photos WHERE sha256 = ?", [sha])]
                tx.execute("DELETE FROM concept_photos WHERE sha256 = ?", [sha])
                tx.execute("DELETE FROM negatives WHERE sha256 = ?", [sha])
                tx.execute("DELETE FROM photos WHERE sha256 = ?", [sha])
                for concept_id in concepts:  # fewer photos than it was trained on: train again
                    tx.execute("UPDATE concepts SET status = 'added', updated_at = ? WHERE id = ?", [now(), concept_id])
            for r in lost_checkpoints:
                tx.execute("DELETE FROM checkpoints WHERE id = ?", [r["id"]])
                tx.execute(
                    "UPDATE concepts SET status = 'added', threshold = NULL, updated_at = ? WHERE id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM checkpoints WHERE concept_id = ? AND is_current = 1)", [now(), r["concept_id"], r["concept_id"]])
            for r in stale_runs:
                tx.execute("UPDATE runs SET status = 'interrupted', finished_at = ? WHERE id = ?", [now(), r["id"]])
        for sha in bad_photos:
            registry.photo_file(sha).unlink(missing_ok=True)
        for path in orphans + stray + temporary:
            path.unlink(missing_ok=True)
        for item in found:
            item["fixed"] = item["kind"] not in ("database", "fact")
    return {"registry": str(root / "registry.db"), "schema_version": registry.schema_version,
            "schema_expected": len(MIGRATIONS), "problems": found,
            "ok": not [p for p in found if not p["fixed"]]}


def running(registry: Registry, name: str | None) -> bool:
    """Whether a live process holds the concept's training lock."""
    if name is None:
        return False
    try:
        with registry.lock(f"train-{name}", "checking"):
            return False
    except UserError:
        return True


def summary_line(report: dict) -> str:
    open_problems = [p for p in report["problems"] if not p["fixed"]]
    if not report["problems"]:
        return f"registry OK (schema {report['schema_version']})"
    if not open_problems:
        return f"fixed {len(report['problems'])} problem(s)"
    return f"{len(open_problems)} problem(s); `yollava doctor --fix` repairs what is safe to repair"
