"""A benchmark dataset laid out like ../shared/data/concepts (manifest, descriptions, text and
visual multiple-choice questions, optional facts), read and checked with one-line errors naming the
file; and its leave-photos-out rotations."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.store.concepts import parse_name

PETS = {"dog", "cat"}


@dataclass
class Subject:
    name: str
    kind: str
    train: list[Path]
    test: list[Path]


@dataclass
class Dataset:
    root: Path
    subjects: dict[str, Subject]
    descriptions: dict[str, str]
    text_qa: dict[str, list[dict]]
    visual_qa: dict[Path, dict]
    facts: dict[str, dict] = field(default_factory=dict)  # facts.json, optional: {subject: {facts, questions, gift?}}
    others: dict[str, Subject] = field(default_factory=dict)  # not evaluated (--subjects); their train photos are negatives


def read_json(path: Path):
    if not path.exists():
        raise UserError(f"{path}: missing; a dataset needs manifest.json, descriptions.json, text_qa.json and visual_qa.json")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None


def subject_key(raw: str, path: Path, known: dict) -> str:
    name = raw.strip("<>")
    if name not in known:
        raise UserError(f"{path}: unknown subject {raw!r} (not in manifest.json)")
    return name


def load_dataset(root: Path, only: list[str] | None = None) -> Dataset:
    """Read and check a dataset laid out like ../shared/data/concepts; one-line errors naming the file."""
    if not root.is_dir():
        raise UserError(f"{root}: not a dataset folder")
    manifest_path = root / "manifest.json"
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or not manifest:
        raise UserError(f"{manifest_path}: expected an object of subjects")
    subjects = {}
    for name, entry in manifest.items():
        try:
            parse_name(name)
            train, test = [root / p for p in entry["train"]], [root / p for p in entry["test"]]
            kind = "pet" if entry.get("class") in PETS else "object"
        except (KeyError, TypeError, UserError) as e:
            raise UserError(f"{manifest_path}: bad entry for subject {name!r} ({e})") from None
        for photo in train + test:
            if not photo.is_file():
                raise UserError(f"{manifest_path}: subject {name!r} lists {photo}, which does not exist")
        if not train or not test:
            raise UserError(f"{manifest_path}: subject {name!r} needs train and test photos")
        subjects[name] = Subject(name, kind, train, test)
    descriptions = {subject_key(k, root / "descriptions.json", subjects): v for k, v in read_json(root / "descriptions.json").items()}
    text_qa = {subject_key(k, root / "text_qa.json", subjects): v for k, v in read_json(root / "text_qa.json").items()}
    visual_qa = {}
    for photo, item in read_json(root / "visual_qa.json").items():
        try:
            subject_key(item["subject"], root / "visual_qa.json", subjects)
            item["options"], item["correct_answer"], item["question"]
        except (KeyError, TypeError):
            raise UserError(f"{root / 'visual_qa.json'}: entry {photo!r} needs subject, question, options, correct_answer") from None
        visual_qa[root / photo] = item
    facts = {}
    if (root / "facts.json").exists():
        for key, entry in read_json(root / "facts.json").items():
            if not isinstance(entry, dict) or not isinstance(entry.get("facts"), list) or not isinstance(entry.get("questions"), list):
                raise UserError(f"{root / 'facts.json'}: entry {key!r} needs a facts list and a questions list")
            facts[subject_key(key, root / "facts.json", subjects)] = entry
    if only:
        unknown = [s for s in only if s not in subjects]
        if unknown:
            raise UserError(f"unknown subject(s) {', '.join(unknown)}; the dataset has {', '.join(sorted(subjects))}")
        others = {s: v for s, v in subjects.items() if s not in only}
        subjects = {s: subjects[s] for s in only}
        return Dataset(root, subjects, descriptions, text_qa, visual_qa, facts, others)
    return Dataset(root, subjects, descriptions, text_qa, visual_qa, facts)


def rotate(dataset: Dataset, fold: int) -> Dataset:
    """Leave-photos-out rotation: within each subject, a different slice of its photos is the test set."""
    subjects = {}
    for name, s in dataset.subjects.items():
        photos = sorted(s.train + s.test)
        k = len(s.test)
        start = (fold * k) % len(photos)
        test = [photos[(start + i) % len(photos)] for i in range(k)]
        subjects[name] = Subject(name, s.kind, [p for p in photos if p not in test], test)
    return Dataset(dataset.root, subjects, dataset.descriptions, dataset.text_qa, dataset.visual_qa, dataset.facts, dataset.others)
