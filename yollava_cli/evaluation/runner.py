"""The paper's benchmark as one command: recognition, text-only and visual multiple choice, caption
recall and personal facts, for the trained soft tokens and the prompting baselines side by side.

Each dataset is evaluated in a registry of its own (under the data dir's eval/ folder), so
subjects never mix with the user's concepts and trained subjects are reused by later runs.
Finished subjects are written to a results file as they complete: an interrupted run resumes.
"""

import hashlib
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from functools import cache
from pathlib import Path

import numpy as np

from yollava_cli import __version__
from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.evaluation.dataset import Dataset, Subject, load_dataset, rotate
from yollava_cli.evaluation.methods import Method, build_methods
from yollava_cli.evaluation.metrics import FACT_SETTINGS, auc, merge_folds, summarise
from yollava_cli.evaluation.report import write_report
from yollava_cli.learning.embeddings import load_embedder
from yollava_cli.learning.events import (
    EmbeddingPool,
    EmbeddingToMine,
    Scoring,
    SubjectStarted,
)
from yollava_cli.learning.mining import add_pool
from yollava_cli.learning.recognition import current
from yollava_cli.learning.synthesis import answer_once, score_question, subject_word
from yollava_cli.learning.training import (
    TrainConfig,
    calibrate,
    prepare_concept,
    recognition_metrics,
)
from yollava_cli.models.loading import load_vlm
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.store.concepts import add_concept, current_checkpoint_file
from yollava_cli.store.facts import as_sentence, set_facts
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.photos import BadPhoto, read_photo
from yollava_cli.store.registry import Registry, now
from yollava_cli.store.states import ConceptStatus
from yollava_cli.use.ask import note_guidance

CAPTION_PROMPT = "Describe this photo in one sentence."

SUBJECT_PROMPT = "Describe the main subject of this photo in one sentence."

FORGETTING_QUESTIONS = ("What is in this photo?", "What color is the main object?")

CAPTION_TOKENS = 32

FACT_TOKENS = 48
PROTOCOLS = ("isolated", "library")


def mcq_prompt(item: dict) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in sorted(item["options"].items()))
    return f"{item['question']}\n{options}\nAnswer with the option's letter."


class Evaluation:
    def __init__(self, dataset: Dataset, vlm: VLM, registry: Registry, embedder, methods: list[str],
                 config: TrainConfig, on_event: Callable[..., None]):
        self.dataset, self.vlm, self.registry, self.embedder = dataset, vlm, registry, embedder
        self.methods, self.config, self.on_event = build_methods(methods), config, on_event
        self.images: dict[Path, tuple] = {}
        self.auto_descriptions: dict[str, str] = {}
        self.embedded: dict[Path, np.ndarray] = {}
        self.recognizers: dict[str, object] = {}

    def photo(self, path: Path):
        if path not in self.images:
            try:
                photo = read_photo(path)
            except BadPhoto as e:  # it decoded as the dataset loaded: changed since
                raise UserError(f"{path}: {e}; replace it, or remove it from the dataset's manifest.json") from None
            self.images[path] = (photo.image, photo.sha256)
        return self.images[path]

    def prompt(self, method: Method, subject: str, question: str, photos: list[Path]) -> Prompt:
        loaded = [self.photo(p) for p in photos]
        prefix = method.prefix(self, subject)
        text = f"{prefix}\n{question}" if prefix else question
        return Prompt(text, [i for i, _ in loaded], [k for _, k in loaded], method.concepts(subject))

    def yes_probabilities(self, method: Method, subject: str, photos: list[Path]) -> list[float]:
        """P(yes) to the recognition question about each photo, in this method's prompt."""
        return self.vlm.yes_probabilities([self.prompt(method, subject, score_question(subject), [p]) for p in photos])

    def recognizer(self, subject: str):
        """The subject's head and fusion, read from its checkpoint once (head, fused and ask all use it)."""
        if subject not in self.recognizers:
            self.recognizers[subject] = current(self.registry, self.registry.concept(subject))
        if self.recognizers[subject] is None:
            raise UserError(f"<{subject}> has no concept head: this eval needs an image embedder at training")
        return self.recognizers[subject]

    def auto_description(self, subject: str) -> str:
        """The base model describes the train photos, then sums them up in one sentence (paper Table 27)."""
        if subject not in self.auto_descriptions:
            self.auto_descriptions[subject] = self.describe(subject)
        return self.auto_descriptions[subject]

    def subject_word(self, subject: str) -> str | None:
        """The base model's word for the subject, as training started from it (cached answers)."""
        concept = self.registry.concept(subject)
        return subject_word(self.registry, self.vlm, self.registry.concept_photos(concept["id"]))

    def describe(self, subject: str) -> str:
        captions = []
        for path in self.dataset.subjects[subject].train:
            image, sha = self.photo(path)
            captions.append(answer_once(self.registry, self.vlm, sha, SUBJECT_PROMPT, Prompt(SUBJECT_PROMPT, [image], [sha]), CAPTION_TOKENS))
        joined = "\n".join(f"- {c}" for c in captions)
        key = hashlib.sha256(joined.encode()).hexdigest()
        summary = answer_once(self.registry, self.vlm, key, "summary", Prompt(
            f"These sentences describe photos of the same subject:\n{joined}\nDescribe the subject's appearance in one sentence."
        ), CAPTION_TOKENS)
        return f"<{subject}> is the subject of these photos: {summary}"

    def train(self, subject: Subject) -> dict:
        add_concept(self.registry, subject.name, subject.train, kind=subject.kind)
        if self.config.facts_in_tokens and subject.name in self.dataset.facts:
            set_facts(self.registry, subject.name, self.dataset.facts[subject.name]["facts"])
        concept = self.registry.concept(subject.name)
        checkpoint = self.registry.current_checkpoint(concept["id"])
        other_config = checkpoint is None or json.loads(checkpoint["config"] or "{}") != asdict(self.config)
        if concept["status"] != ConceptStatus.TRAINED or concept["base_fingerprint"] != self.vlm.fingerprint or other_config:
            prepare_concept(self.registry, subject.name, lambda: self.vlm, lambda: self.embedder, self.config,
                            on_progress=lambda done, total: self.on_event(EmbeddingToMine(done, total)),
                            on_event=self.on_event)
            concept = self.registry.concept(subject.name)
        if subject.name not in self.vlm.tokens:
            self.vlm.tokens.load(current_checkpoint_file(self.registry, concept))
        return concept

    def vectors(self, photos: list[Path]) -> np.ndarray:
        """Embedder vectors, computed once per photo for the whole run."""
        missing = [p for p in photos if p not in self.embedded]
        if missing:
            self.embedded.update(zip(missing, self.embedder.embed([self.photo(p)[0] for p in missing])))
        return np.stack([self.embedded[p] for p in photos])

    def similarities(self, subject: str, photos: list[Path]) -> list[float]:
        train = self.vectors(self.dataset.subjects[subject].train)
        return (self.vectors(photos) @ train.T).max(axis=1).tolist()

    def embedding_threshold(self, subject: str, concept: dict) -> float:
        """Calibrated on training data only: each train photo against the others (positives) and the
        concept's mined negatives against the train photos."""
        train = self.vectors(self.dataset.subjects[subject].train)
        sims = train @ train.T
        np.fill_diagonal(sims, -1)
        pos = sims.max(axis=1).tolist()
        files = [self.registry.root / file for file in self.registry.negative_files(concept["id"])]
        neg = (self.embedder.embed([read_photo(f).image for f in files]) @ train.T).max(axis=1).tolist() if files else []
        return calibrate(recognition_metrics(pos, neg))

    def evaluate_subject(self, subject: Subject) -> dict:
        concept = self.train(subject)
        others = [p for s in self.dataset.subjects.values() if s.name != subject.name for p in s.test]
        results = {}
        for method in self.methods:
            self.on_event(Scoring(subject.name, method.name))
            with self.identifier_for(method, subject.name):
                pos, neg = method.scores(self, subject.name, subject.test), method.scores(self, subject.name, others)
                threshold = method.threshold(self, subject.name, concept)
                at_half = recognition_metrics(pos, neg, 0.5 if method.cut_at_half else threshold)
                at_threshold = recognition_metrics(pos, neg, threshold)
                entry = {"recognition": {"positive": at_half["positive"], "negative": at_half["negative"],
                                         "weighted": at_half["weighted"], "auc": auc(pos, neg),
                                         "threshold": threshold, "weighted_at_threshold": at_threshold["weighted"]}}
                if method.language:
                    entry.update(self.language_metrics(method, subject))
                entry.update(method.extra(self, subject.name))
            results[method.name] = entry
        return results

    @contextmanager
    def identifier_for(self, method: Method, subject: str):
        """Methods that do not read the trained rows must not see them: the question names the
        identifier, whose trained row (which starts at the subject's word) would otherwise leak in."""
        if method.trained or subject not in self.vlm.tokens:
            yield
            return
        k, (rows, head) = self.vlm.tokens.latents(subject), self.vlm.tokens.rows(subject)
        self.vlm.tokens.add(subject, k, **method.start_rows(self, subject))
        try:
            yield
        finally:
            self.vlm.tokens.add(subject, k, rows, head)

    def language_metrics(self, method: Method, subject: Subject) -> dict:
        text = self.dataset.text_qa.get(subject.name, [])
        visual = [(p, item) for p, item in self.dataset.visual_qa.items() if item["subject"].strip("<>") == subject.name and p in subject.test]
        text_right = visual_right = 0
        if text:
            chosen = self.vlm.choose([self.prompt(method, subject.name, mcq_prompt(q), []) for q in text], ["A", "B"])
            text_right = sum(c == q["correct_answer"] for c, q in zip(chosen, text))
        if visual:
            chosen = self.vlm.choose([self.prompt(method, subject.name, mcq_prompt(q), [p]) for p, q in visual], ["A", "B"])
            visual_right = sum(c == q["correct_answer"] for c, (_, q) in zip(chosen, visual))
        captions = [self.vlm.generate(self.prompt(method, subject.name, CAPTION_PROMPT, [p]), max_new_tokens=CAPTION_TOKENS)
                    for p in subject.test]
        recalled = sum(f"<{subject.name}>" in c for c in captions)
        return {"text_mcq": {"accuracy": text_right / len(text) if text else None, "n": len(text)},
                "visual_mcq": {"accuracy": visual_right / len(visual) if visual else None, "n": len(visual)},
                "caption_recall": {"recall": recalled / len(captions), "n": len(captions)},
                **self.facts_metrics(method, subject.name)}

    def facts_metrics(self, method: Method, subject: str) -> dict:
        """The owner's facts in the concept's opening line or not, on tokens trained with or
        without them (FACT_SETTINGS); each paraphrased question asked, right when the answer
        contains an expected word. The gift question counts a hit when its answer builds on a fact."""
        entry = self.dataset.facts.get(subject)
        if not entry:
            return {}
        questions = entry["questions"] + ([entry["gift"]] if entry.get("gift") else [])
        notes = [as_sentence(subject, fact) for fact in entry["facts"]]
        out = {}
        for setting, in_prompt in FACT_SETTINGS[self.config.facts_in_tokens]:
            right = []
            for item in questions:
                prompt = self.prompt(method, subject, item["question"], [])
                prompt.notes = notes if in_prompt else []
                answer = self.vlm.generate(prompt, max_new_tokens=FACT_TOKENS, **note_guidance(self.vlm, prompt)).lower()
                right.append(any(word.lower() in answer for word in item["answer_contains"]))
            asked = len(entry["questions"])
            out[setting] = {"accuracy": sum(right[:asked]) / asked, "n": asked,
                            "gift_hits": int(right[asked]) if entry.get("gift") else None}
        return out

    def forgetting_check(self) -> dict:
        """With every concept loaded, generic answers must equal the bare base model's (appendix B)."""
        photos = [s.test[0] for s in list(self.dataset.subjects.values())[:3]]
        prompts = [self.prompt(Method(), "", q, [p]) for p in photos for q in FORGETTING_QUESTIONS]
        loaded = {name: (*self.vlm.tokens.rows(name), self.vlm.tokens.latents(name)) for name in list(self.vlm.tokens)}
        with_concepts = [self.vlm.generate(p, max_new_tokens=CAPTION_TOKENS) for p in prompts]
        for name in loaded:
            self.vlm.tokens.remove(name)
        bare = [self.vlm.generate(p, max_new_tokens=CAPTION_TOKENS) for p in prompts]
        for name, (rows, head, k) in loaded.items():
            self.vlm.tokens.add(name, k, rows, head)
        same = sum(a == b for a, b in zip(with_concepts, bare))
        return {"passed": same == len(prompts), "identical": same, "compared": len(prompts), "concepts_loaded": len(loaded)}


@cache
def code_version() -> str:
    """The package version and a hash of its code and templates, computed once: results that other
    code produced (before a bug fix, say) are never served from the cache."""
    digest = hashlib.sha256()
    package = Path(__file__).parents[1]  # the whole package, every floor
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.json")]):
        digest.update(f"{path.relative_to(package)}\0".encode() + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def results_path(eval_root: Path, dataset: Dataset, model_fingerprint: str, methods: list[str], config: TrainConfig,
                 pools: list[Path], protocol: str = "isolated") -> Path:
    settings = json.dumps([str(dataset.root.resolve()), model_fingerprint, sorted(methods), vars(config),
                           [str(p.resolve()) for p in pools], code_version(), protocol], sort_keys=True, default=str)
    return eval_root / f"results-{hashlib.sha256(settings.encode()).hexdigest()[:16]}.json"


def run_eval(dataset: Dataset, vlm: VLM, embedder, eval_root: Path, methods: list[str], pools: list[Path],
             config: TrainConfig | None = None, folds: int = 1, on_event: Callable[..., None] | None = None,
             protocol: str = "isolated") -> dict:
    """Evaluate every subject (resuming finished ones), then summarise with intervals.

    `protocol`: `isolated` (the paper's) trains each subject alone, in a registry of its own, from
    negatives mined out of the pools (without --pool, out of the other subjects' train photos as a
    pool): its concept head knows no other subject. `library` trains every subject beside the
    others, as a user's concepts: each head knows the others' train photos, so a look-alike among
    the test negatives (another corgi) was seen in training, as in a user's own library."""
    check_run(dataset, methods, protocol)
    config = config or TrainConfig()
    on_event = on_event or (lambda event: None)
    start = time.perf_counter()
    folded = []
    for fold in range(folds):
        fold_data = rotate(dataset, fold) if folds > 1 else dataset
        path = results_path(eval_root, fold_data, vlm.fingerprint, methods, config, pools, protocol).with_suffix(f".fold{fold}.json")
        done = json.loads(path.read_text()) if path.exists() else {}
        shared = library_registry(eval_root / f"fold{fold}", fold_data, pools, embedder, on_event) if protocol == "library" else None
        for index, subject in enumerate(fold_data.subjects.values()):
            on_event(SubjectStarted(subject.name, index, len(fold_data.subjects), fold, folds))
            registry = shared or isolated_registry(eval_root / f"fold{fold}-isolated" / subject.name, fold_data, subject,
                                                   pools, embedder, on_event)
            evaluation = Evaluation(fold_data, vlm, registry, embedder, methods, config, on_event)
            if subject.name not in done:
                done[subject.name] = evaluation.evaluate_subject(subject)
                atomic_write_bytes(path, json.dumps(done, indent=1).encode())
            else:
                evaluation.train(subject)  # loaded for the forgetting check
        folded.append((done, evaluation.forgetting_check()))
    return run_summary(dataset, vlm.ref, folded, methods, pools, protocol, start)


def check_run(dataset: Dataset, methods: list[str], protocol: str) -> None:
    """What makes a run impossible, said before any model loads or trains."""
    build_methods(methods)  # an unknown name fails before any training
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}: use {' or '.join(PROTOCOLS)}")
    if len(dataset.subjects) < 2:
        raise UserError("eval needs at least 2 subjects: each subject's test negatives are the other subjects' "
                        "test photos; name another in --subjects")


def run_summary(dataset: Dataset, model: str, folded: list[tuple[dict, dict]], methods: list[str], pools: list[Path],
                protocol: str, start: float) -> dict:
    """The run's result from each fold's (per-subject results, forgetting check)."""
    per_subject = {name: merge_folds([f[0][name] for f in folded]) for name in dataset.subjects}
    forgetting = {k: sum(f[1][k] for f in folded) for k in ("identical", "compared")}
    forgetting["passed"] = all(f[1]["passed"] for f in folded)
    return {"model": model, "dataset": str(dataset.root), "methods": summarise(per_subject, methods),
            "subjects": per_subject, "forgetting": forgetting, "folds": len(folded),
            "negatives": f"pools {', '.join(map(str, pools))}" if pools else "other subjects' train photos",
            "protocol": protocol,
            "wall_s": round(time.perf_counter() - start, 1), "finished_at": now()}


def library_registry(folder: Path, data: Dataset, pools: list[Path], embedder, on_event) -> Registry:
    """Every subject as a user's concept, in one registry: without --pool, mining finds the others'
    photos (subset or not), and each concept head knows them."""
    registry = Registry(folder)
    add_pools(registry, pools, embedder, on_event)
    for subject in [*data.subjects.values(), *data.others.values()]:
        add_concept(registry, subject.name, subject.train, kind=subject.kind)
    return registry


def isolated_registry(folder: Path, data: Dataset, subject: Subject, pools: list[Path], embedder, on_event) -> Registry:
    """The subject alone, as the paper trains it: its negatives are mined from the pools, or without
    any, from a pool of the other subjects' train photos (copied, so it holds no test photo)."""
    registry = Registry(folder)
    if not pools:
        others = folder / "others"
        others.mkdir(parents=True, exist_ok=True)
        for other in [*data.subjects.values(), *data.others.values()]:
            if other.name != subject.name:
                for photo in other.train:
                    copy = others / f"{other.name}-{photo.name}"
                    if not copy.exists():
                        atomic_write_bytes(copy, photo.read_bytes())
        pools = [others]
    add_pools(registry, pools, embedder, on_event)
    add_concept(registry, subject.name, subject.train, kind=subject.kind)
    return registry


def add_pools(registry: Registry, pools: list[Path], embedder, on_event) -> None:
    for i, pool in enumerate(pools):
        if registry.pool(f"pool{i}") is None:
            add_pool(registry, f"pool{i}", pool, embedder, lambda d, t: on_event(EmbeddingPool(d, t)))


def record_run(registry: Registry, result: dict) -> int:
    """Keep the run in the user's registry, so cron jobs can track drift (`eval --history`)."""
    return registry.record_eval_run({"model": result["model"], "dataset": result["dataset"], "folds": result["folds"]},
                                    result, result["finished_at"])


def history(registry: Registry) -> list[dict]:
    rows = registry.eval_runs()
    out = []
    for row in rows:
        result = json.loads(row["results"])
        out.append({"id": row["id"], "finished_at": row["finished_at"], "model": result["model"],
                    "dataset": result["dataset"], "wall_s": result.get("wall_s"),
                    "weighted": {m: v.get("recognition", {}).get("weighted") for m, v in result["methods"].items()}})
    return out


def evaluate(registry: Registry, dataset: Path, subjects: list[str] | None, methods: list[str], pools: list[Path],
             config: TrainConfig, folds: int = 1, model: str | None = None, quantize: str | None = None,
             report: Path | None = None, on_event: Callable[..., None] | None = None, on_status=None,
             protocol: str = "isolated") -> dict:
    """`yollava eval`: the dataset checked before any model loads, the run (in the data dir's eval/
    registries), recorded in the user's registry for --history, and its report written if asked."""
    data = load_dataset(dataset, subjects)
    check_run(data, methods, protocol)
    vlm = load_vlm(model, on_status=on_status, quantize=quantize)
    embedder = load_embedder()
    if embedder.note and on_status:
        on_status(embedder.note)
    result = run_eval(data, vlm, embedder, data_dir() / "eval", methods, pools, config, folds, on_event, protocol)
    result["run_id"] = record_run(registry, result)
    if report:
        result["report_files"] = [str(p) for p in write_report(result, report)]
    return result
