"""Concepts in the registry: naming rules, adding photos, describing and removing concepts."""

import difflib
import json
import re
import shlex
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.store.fileio import path_text, staging_folder
from yollava_cli.store.photo_check import stored_damage
from yollava_cli.store.photos import expand_photo_paths, stage_photos
from yollava_cli.store.records import Concept, ConceptPhoto
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus, NegativeKind
from yollava_cli.store.trash import move_to_trash, trash_folder

KINDS = ("person", "pet", "object", "place", "character")
Kind = Enum("Kind", {k: k for k in KINDS}, type=str)  # for the CLI's choices
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Words that mean something else in prompts or on the command line.
RESERVED_NAMES = {"image", "user", "assistant", "system", "all", "none", "s", "pad", "unk"}
MENTION = re.compile(r"<([a-z0-9][a-z0-9_-]{0,31})>")


def parse_name(raw: str) -> str:
    """`<bo>` and `bo` both name the concept `bo`; anything else is refused with the rule."""
    name = raw.strip()
    if name.startswith("<") and name.endswith(">"):
        name = name[1:-1]
    if not NAME_PATTERN.match(name):
        raise UserError(
            f"invalid concept name {raw!r}: use 1-32 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. bo or <bo>)"
        )
    if re.search(r"_\d+$", name):
        raise UserError(
            f"invalid concept name {raw!r}: a name may not end in _<number>, "
            "which is the shape of latent tokens like <bo_0>"
        )
    if name in RESERVED_NAMES:
        raise UserError(f"invalid concept name {raw!r}: it is reserved; pick another name")
    return name


def get_concept(registry: Registry, raw_name: str) -> Concept:
    """The concept called `raw_name`, or a one-line error that lists close names."""
    name = parse_name(raw_name)
    concept = registry.concept(name)
    if concept is None:
        names = [c.name for c in registry.concepts()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else (
            "; `yollava list` shows your concepts" if names else "; add one with `yollava add NAME PHOTOS...`"
        )
        raise UserError(f"unknown concept {name!r}{hint}")
    return concept


def mentioned_concepts(question: str, names: list[str]) -> list[str]:
    """The given names, then every `<name>` in the question, in order, without repeats."""
    found = [parse_name(n) for n in names]
    found += [m for m in MENTION.findall(question) if m not in RESERVED_NAMES and not re.search(r"_\d+$", m)]
    return list(dict.fromkeys(found))


def require_trained(registry: Registry, raw_name: str, then: str = " (or drop --no-train)") -> Concept:
    """The concept, if trained; else a one-line error saying how to train it."""
    concept = get_concept(registry, raw_name)
    if concept.status != ConceptStatus.TRAINED:
        raise UserError(f"<{concept.name}> is not trained yet: run `yollava train {concept.name}`{then}")
    return concept


@dataclass
class AddResult:
    concept: str
    kind: str
    created: bool
    new_photos: int
    total_photos: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    restored_photos: int = 0  # stored photos whose files had gone missing or were damaged, written again

    def to_json(self) -> dict:
        """What `add --json` prints of the add: the fields are the keys, a skipped file an object."""
        return {**asdict(self), "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def add_concept(
    registry: Registry,
    raw_name: str,
    inputs: list[Path],
    kind: str | None = None,
    replace: bool = False,
    strict: bool = False,
    with_concept: Callable[[Concept], None] | None = None,
) -> AddResult:
    """Add photos to a concept (creating it), all in one transaction.

    Each photo is read, downscaled and written to a staging folder one at a time, before the
    transaction (so memory does not grow with their number, nor is the write lock held while they
    decode); the transaction moves the staged files into the store.

    Adding to an existing concept appends only photos it does not have yet; `replace` starts
    the concept afresh. Unusable files are skipped and reported, or refused with `strict`.
    `with_concept(concept row)` runs in the same transaction before any photo is written (facts
    noted with the add): if it raises, nothing at all is stored.
    """
    name = parse_name(raw_name)
    if kind is not None and kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    check_collisions(registry, name, kind, replace)

    with staging_folder(registry.root) as staging:
        staged, skipped = stage_photos(expand_photo_paths(inputs), staging, strict)
        if not staged:
            reasons = "; ".join(f"{p}: {r}" for p, r in skipped)
            raise UserError(f"no usable photo for {name!r} ({reasons})")
        # replacing drops the concept's checkpoints: not while a training of it writes one
        with registry.lock(f"train-{name}", f"training <{name}>") if replace else nullcontext():
            with registry.transaction():
                concept = registry.concept(name)
                orphaned: list[str] = []
                if concept and replace:
                    orphaned = registry.delete_concept(concept.id)
                    concept = None
                created = concept is None
                if created:
                    concept = registry.create_concept(name, kind or "object")
                kind = concept.kind
                if with_concept:
                    with_concept(concept)
                new = restored = 0
                for sha, photo in staged.items():
                    restored += registry.photo_needs_restoring(sha)
                    registry.store_photo(sha, photo.file, *photo.size)
                    new += registry.add_concept_photo(concept.id, sha, path_text(photo.source.resolve()))
                if new and not created:
                    # New photos make earlier negatives and tokens stale: the concept must be mined and trained again.
                    registry.set_concept_status(concept.id, ConceptStatus.ADDED)
                removed = registry.delete_unused_photos(orphaned)
                total = registry.concept_photo_count(concept.id)
            registry.unlink_photo_files(removed)
            if replace:
                retire_checkpoints(registry, name)
    return AddResult(name, kind, created, new, total, skipped, restored)


def retire_checkpoints(registry: Registry, name: str) -> list[Path]:
    """After `add --replace` committed, under the concept's training lock: the old concept's
    checkpoint files (and resume state), which no row names any more, go to the trash, as doctor
    would move them, so a replace made by mistake can be undone for a while."""
    folder = registry.root / "checkpoints" / name
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file()) if folder.is_dir() else []
    if not files:
        return []
    trash = trash_folder(registry.root)
    return [move_to_trash(registry.root, path, trash) for path in files]


def check_collisions(registry: Registry, name: str, kind: str | None, replace: bool) -> None:
    """Refuse look-alike names (bo-cat vs bo_cat) and a kind change, unless replacing."""
    if replace:
        return
    for other in registry.concepts():
        if other.name == name:
            if kind and kind != other.kind:
                raise UserError(
                    f"concept {name!r} exists as a {other.kind}; use --replace to start it afresh as a {kind}"
                )
        elif other.name.replace("-", "_") == name.replace("-", "_"):
            raise UserError(
                f"{name!r} is too close to the existing concept {other.name!r}; "
                "pick another name or use that one"
            )


def missing_photos(registry: Registry, photos: list[ConceptPhoto]) -> list[dict]:
    """Of a concept's photos, those whose stored files are gone (deleted by hand, a failed disk)."""
    return [{"sha256": p.sha256, "source": p.source_path, "stored": str(registry.root / p.file)}
            for p in photos if not (registry.root / p.file).is_file()]


def damaged_photos(registry: Registry, photos: list[ConceptPhoto]) -> list[dict]:
    """Of a concept's photos, those whose stored files are there but not as the store wrote
    them (by size: a stat each, photo_check)."""
    return [{"sha256": p.sha256, "source": p.source_path, "stored": str(registry.root / p.file)}
            for p in photos if (registry.root / p.file).is_file() and stored_damage(registry.root, p)]


def require_photos(registry: Registry, concept: Concept, negatives: bool = False) -> None:
    """A one-line error naming the concept's photos (and, with `negatives`, its negatives) that
    are missing from the store or damaged, with the fix; before mining or training would stumble
    on them."""
    photos = registry.concept_photos(concept.id)
    name, missing = concept.name, missing_photos(registry, photos)
    damaged = damaged_photos(registry, photos)
    if damaged:
        sources = [m["source"] or m["stored"] for m in damaged]
        raise UserError(
            f"<{name}>: {len(damaged)} stored photo(s) damaged (e.g. {damaged[0]['stored']}, from {sources[0]}); "
            f"re-add the originals to restore them (`yollava add {name} "
            f"{' '.join(map(shlex.quote, sources[:3]))}`), or `yollava doctor --fix` moves them to the trash"
        )
    if missing:
        sources = [m["source"] or m["stored"] for m in missing]
        one = len(missing) == 1
        shown = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
        raise UserError(
            f"<{name}>: {len(missing)} stored photo{' is' if one else 's are'} missing from the store ({shown}); "
            f"re-add {'it' if one else 'them'} with `yollava add {name} {' '.join(map(shlex.quote, sources[:3]))}`, "
            f"or forget {'it' if one else 'them'} with `yollava doctor --fix`"
        )
    lost = [p.file for p in registry.negative_photos(concept.id) if stored_damage(registry.root, p)] if negatives else []
    if lost:
        raise UserError(f"<{name}>: {len(lost)} of its negatives are missing from the store or damaged (e.g. {lost[0]}); "
                        f"choose them again with `yollava mine {name}`, or forget them with `yollava doctor --fix`")


def current_checkpoint_file(registry: Registry, concept: Concept) -> Path | None:
    """The concept's current checkpoint file (None when it has none), or a one-line error with the
    ways forward when the file its row names is gone."""
    checkpoint = registry.current_checkpoint(concept.id)
    if checkpoint is None:
        return None
    path = registry.root / checkpoint.file
    if not path.is_file():
        name = concept.name
        raise UserError(f"<{name}>: its checkpoint {path} is missing (deleted or lost); train it again with "
                        f"`yollava train {name}`, or let `yollava doctor --fix` forget it")
    return path


def remove_concept(registry: Registry, raw_name: str) -> dict:
    """Remove a concept, its checkpoints, and the photos no other concept uses. The folders of its
    files are checked first: one that cannot be written to refuses the removal with nothing
    changed, rather than dropping rows whose files then stay behind."""
    concept = get_concept(registry, raw_name)
    name = concept.name
    with registry.lock(f"train-{name}", f"training <{name}>"):
        checkpoint_files = [registry.root / file for file in registry.checkpoint_files(concept.id)]
        photo_files = [registry.root / p.file for p in registry.concept_photos(concept.id)]
        for folder in sorted({path.parent for path in checkpoint_files + photo_files if path.exists()}):
            try:
                tempfile.TemporaryFile(dir=folder).close()  # a file created and gone: what deleting needs
            except OSError as e:
                raise UserError(f"cannot remove <{name}>: {folder} is not writable ({e.strerror}); nothing was changed; "
                                f"make it writable, then run `yollava rm {name}` again") from None
        with registry.transaction():
            removed = registry.delete_unused_photos(registry.delete_concept(concept.id))
        try:
            registry.unlink_photo_files(removed)
            for path in checkpoint_files:
                path.unlink(missing_ok=True)
        except OSError as e:
            raise UserError(f"removed <{name}> from the registry, but not all its files: {e.filename}: {e.strerror}; "
                            "`yollava doctor --fix` moves what is left to the trash once it can") from None
    return {"removed": name, "photos_deleted": len(removed)}


def describe_concept(registry: Registry, raw_name: str) -> dict:
    """Everything `show` reports about one concept, as plain JSON-able data."""
    concept = get_concept(registry, raw_name)
    photos = registry.concept_photos(concept.id)
    missing = missing_photos(registry, photos)
    negatives = registry.negative_counts(concept.id)
    hardest = registry.hardest_negatives(concept.id, 5)
    checkpoint = registry.current_checkpoint(concept.id)
    return {
        "name": concept.name,
        "kind": concept.kind,
        "status": concept.status,
        "base_model": concept.base_model,
        "metrics": json.loads(checkpoint.metrics or "null") if checkpoint else None,
        "created_at": concept.created_at,
        "updated_at": concept.updated_at,
        "photos": [
            {
                "sha256": p.sha256,
                "role": p.role,
                "source": p.source_path,
                "stored": str(registry.root / p.file),
                "size": [p.width, p.height],
                "missing": any(m["sha256"] == p.sha256 for m in missing),
            }
            for p in photos
        ],
        "missing_photos": missing,
        "facts": [{"number": f.number, "text": f.text} for f in registry.facts(concept.id)],
        "negatives": {
            "hard": negatives.get(NegativeKind.HARD, 0),
            "easy": negatives.get(NegativeKind.EASY, 0),
            "hardest": [{"photo": r.source_path, "score": r.score} for r in hardest],
        },
        "attribute_conversations": attribute_conversation_count(registry, concept),
        "checkpoint": (
            {key: getattr(checkpoint, key) for key in ("file", "base_model", "k", "data_hash", "created_at")} if checkpoint else None
        ),
    }


def attribute_conversation_count(registry: Registry, concept: Concept) -> int:
    """How many attribute conversations training has for the concept (cached answers of its base
    model); read here, not through synthesis, which would import torch into `show`."""
    templates = json.loads(resources.files("yollava_cli").joinpath("data/templates.json").read_text())
    questions = templates["attributes"]["person" if concept.kind == "person" else "other"]["questions"]
    return registry.answer_count(concept.id, concept.base_fingerprint or "", questions)
