"""`doctor`: check the registry against the files it points at, and repair what is safe to repair.

Safe repairs only drop what is already lost or never referenced: orphan and temporary files,
rows whose files are gone, runs left 'running' by a killed process. Nothing valid is deleted.
"""

from pathlib import Path

from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.facts import check_fact
from yollava_cli.migrations import MIGRATIONS
from yollava_cli.store import Registry


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
    root = registry.root
    found = []
    integrity = registry.integrity_check()
    if integrity != "ok":
        found.append(problem("database", f"SQLite integrity check: {integrity} (restore registry.db from a backup)"))

    photos = registry.stored_photos()
    bad_photos = [sha for sha, file in photos.items() if not (root / file).is_file() or not readable(root / file)]
    found += [problem("photo", f"stored photo {sha[:12]} is missing or damaged") for sha in bad_photos]
    known_files = set(photos.values())
    orphans = [p for p in (root / "photos").rglob("*") if p.is_file() and str(p.relative_to(root)) not in known_files]
    found += [problem("orphan", f"{p.relative_to(root)} is not in the registry") for p in orphans]

    checkpoints = registry.checkpoints()
    lost_checkpoints = [r for r in checkpoints if not (root / r["file"]).is_file()]
    found += [problem("checkpoint", f"{r['file']} is missing") for r in lost_checkpoints]
    known_checkpoints = {r["file"] for r in checkpoints}
    stray = [p for p in (root / "checkpoints").rglob("*.safetensors")
             if p.name != "resume.safetensors" and str(p.relative_to(root)) not in known_checkpoints]
    temporary = [p for pattern in ("*.tmp", "*.partial") for p in root.rglob(pattern)]
    found += [problem("orphan", f"{p.relative_to(root)} is not in the registry") for p in stray + temporary]

    stale_runs = [r for r in registry.running_runs() if not running(registry, r["name"])]
    found += [problem("run", f"run {r['id']} ({r['name'] or 'eval'}) was left running by a process that died") for r in stale_runs]

    bad_facts = []  # written around `note` (by hand, an old tool): reported, never rewritten
    for r in registry.all_facts():
        try:
            check_fact(r["text"])
        except UserError as e:
            bad_facts.append(problem("fact", f"<{r['name']}>: {e} (see `yollava note {r['name']}`; remove it with --rm N)"))
    found += bad_facts

    if fix and found:
        with registry.transaction():
            for sha in bad_photos:
                registry.forget_photo(sha)
            for r in lost_checkpoints:
                registry.forget_checkpoint(r["id"], r["concept_id"])
            for r in stale_runs:
                registry.interrupt_run(r["id"])
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
