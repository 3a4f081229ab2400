"""A benchmark dataset laid out like ../shared/data/concepts (manifest, descriptions, text and
visual multiple-choice questions, optional facts), each file checked against its schema with
one-line errors naming the file and the key; and its leave-photos-out rotations."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from yollava_cli.errors import UserError
from yollava_cli.schema import OpenSchema, Schema, Text, read_json
from yollava_cli.store.facts import MAX_FACTS
from yollava_cli.store.photos import BadPhoto, read_photo
from yollava_cli.store.schemas import ConceptName, Fact

PETS = {"dog", "cat"}
DECODE_CHECK_SIDE = 64  # each photo is decoded once as the dataset loads: a bad one fails before any training


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


class ManifestEntry(OpenSchema):
    """One subject: its photos (relative to the dataset folder); "class" (dog, cat, ...) makes a pet."""

    class_: str | None = Field(None, alias="class")
    train: Annotated[list[Text], Field(min_length=1)]
    test: Annotated[list[Text], Field(min_length=1)]


class Options(Schema):
    """Two options: the model's choice is scored from the letters A and B alone (VLM.choose)."""

    A: Text
    B: Text


class Question(Schema):
    question: Text
    options: Options
    correct_answer: Literal["A", "B"]


class VisualQuestion(Question):
    subject: Text


class FactQuestion(Schema):
    question: Text
    answer_contains: Annotated[list[Text], Field(min_length=1)]


class FactsEntry(Schema):
    facts: Annotated[list[Fact], Field(min_length=1, max_length=MAX_FACTS)]
    questions: Annotated[list[FactQuestion], Field(min_length=1)]
    gift: FactQuestion | None = None


Manifest = Annotated[dict[ConceptName, ManifestEntry], Field(min_length=1)]
FILES = {"manifest.json": Manifest, "descriptions.json": dict[str, Text], "text_qa.json": dict[str, list[Question]],
         "visual_qa.json": dict[str, VisualQuestion]}


def read_file(root: Path, name: str):
    """The dataset's file `name`, checked against its schema (FILES, or facts.json's)."""
    path = root / name
    if not path.exists():
        raise UserError(f"{path}: missing; a dataset needs {', '.join(FILES)}")
    return read_json(path, FILES.get(name, dict[str, FactsEntry]))


def subject_key(raw: str, path: Path, known: dict) -> str:
    name = raw.strip("<>")
    if name not in known:
        raise UserError(f"{path}: unknown subject {raw!r} (not in manifest.json)")
    return name


def dataset_photo(root: Path, subject: str, listed: str) -> Path:
    """A photo manifest.json lists, checked: inside the dataset folder as written (no absolute path,
    no `..`: a downloaded manifest must not make eval read other files; a symlink the dataset's
    owner placed is followed), a file, and a photo that decodes."""
    where = f"{root / 'manifest.json'}: subject {subject!r} lists {listed!r}"
    if Path(listed).is_absolute() or ".." in Path(listed).parts:
        raise UserError(f"{where}, outside the dataset folder; list photos by paths relative to {root}, inside it")
    photo = root / listed
    if not photo.is_file():
        raise UserError(f"{where}, which does not exist")
    try:
        read_photo(photo, max_side=DECODE_CHECK_SIDE)
    except BadPhoto as e:
        raise UserError(f"{photo}: {e}; a photo of {subject!r} in {root / 'manifest.json'}: replace it, "
                        "or remove it from the manifest") from None
    return photo


def load_dataset(root: Path, only: list[str] | None = None) -> Dataset:
    """Read and check a dataset laid out like ../shared/data/concepts; one-line errors naming the file."""
    if not root.is_dir():
        raise UserError(f"{root}: not a dataset folder")
    subjects = {}
    for name, entry in read_file(root, "manifest.json").items():
        train = [dataset_photo(root, name, p) for p in entry.train]
        test = [dataset_photo(root, name, p) for p in entry.test]
        subjects[name] = Subject(name, "pet" if entry.class_ in PETS else "object", train, test)
    descriptions = {subject_key(k, root / "descriptions.json", subjects): v for k, v in read_file(root, "descriptions.json").items()}
    text_qa = {subject_key(k, root / "text_qa.json", subjects): [q.model_dump() for q in v]
               for k, v in read_file(root, "text_qa.json").items()}
    visual_qa = {}
    for photo, item in read_file(root, "visual_qa.json").items():
        subject = subjects[subject_key(item.subject, root / "visual_qa.json", subjects)]
        if root / photo not in subject.train + subject.test:
            raise UserError(f"{root / 'visual_qa.json'}: {photo!r} is not one of {item.subject}'s photos in manifest.json")
        visual_qa[root / photo] = item.model_dump()
    facts = {}
    if (root / "facts.json").exists():
        facts = {subject_key(k, root / "facts.json", subjects): v.model_dump() for k, v in read_file(root, "facts.json").items()}
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
