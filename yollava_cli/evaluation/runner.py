"""The paper's benchmark for one subject: recognition, text-only and visual multiple choice, caption
recall and personal facts, for the trained soft tokens and the prompting baselines side by side,
and the forgetting check. evaluation.runs runs it over a dataset's subjects.
"""

import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from yollava_cli.errors import UserError
from yollava_cli.evaluation.dataset import Dataset, Subject
from yollava_cli.evaluation.methods import Method, build_methods
from yollava_cli.evaluation.metrics import auc
from yollava_cli.evaluation.records import (
    FACT_SETTINGS,
    Choices,
    Facts,
    Forgetting,
    MethodResult,
    Recall,
    Recognition,
    SubjectResults,
)
from yollava_cli.learning.events import Scoring
from yollava_cli.learning.recognition import current
from yollava_cli.learning.synthesis import answer_once, score_question, subject_word
from yollava_cli.learning.training import (
    TrainConfig,
    calibrate,
    prepare_concept,
    recognition_metrics,
)
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import report
from yollava_cli.store.concepts import add_concept, current_checkpoint_file
from yollava_cli.store.facts import as_sentence, set_facts
from yollava_cli.store.photos import BadPhoto, read_photo
from yollava_cli.store.records import Concept
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus
from yollava_cli.use.ask import answered, steered

CAPTION_PROMPT = "Describe this photo in one sentence."

SUBJECT_PROMPT = "Describe the main subject of this photo in one sentence."

FORGETTING_QUESTIONS = ("What is in this photo?", "What color is the main object?")

CAPTION_TOKENS = 32

FACT_TOKENS = 48


def mcq_prompt(item: dict) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in sorted(item["options"].items()))
    return f"{item['question']}\n{options}\nAnswer with the option's letter."


class Evaluation:
    def __init__(self, dataset: Dataset, vlm: VLM, registry: Registry, embedder, methods: list[str],
                 config: TrainConfig):
        self.dataset, self.vlm, self.registry, self.embedder = dataset, vlm, registry, embedder
        self.methods, self.config = build_methods(methods), config
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
        return self.recognizer_and_cuts(subject)[0]

    def cuts(self, subject: str) -> dict:
        """The cuts that go with `recognizer(subject)`, by signal."""
        return self.recognizer_and_cuts(subject)[1]

    def recognizer_and_cuts(self, subject: str) -> tuple:
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
        return subject_word(self.registry, self.vlm, self.registry.concept_photos(concept.id))

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

    def train(self, subject: Subject) -> Concept:
        add_concept(self.registry, subject.name, subject.train, kind=subject.kind)
        if self.config.facts_in_tokens and subject.name in self.dataset.facts:
            set_facts(self.registry, subject.name, self.dataset.facts[subject.name]["facts"])
        concept = self.registry.concept(subject.name)
        checkpoint = self.registry.current_checkpoint(concept.id)
        other_config = checkpoint is None or json.loads(checkpoint.config or "{}") != asdict(self.config)
        if concept.status != ConceptStatus.TRAINED or concept.base_fingerprint != self.vlm.fingerprint or other_config:
            prepare_concept(self.registry, subject.name, lambda: self.vlm, lambda: self.embedder, self.config)
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

    def embedding_threshold(self, subject: str, concept: Concept) -> float:
        """Calibrated on training data only: each train photo against the others (positives) and the
        concept's mined negatives against the train photos."""
        train = self.vectors(self.dataset.subjects[subject].train)
        sims = train @ train.T
        np.fill_diagonal(sims, -1)
        pos = sims.max(axis=1).tolist()
        files = [self.registry.root / file for file in self.registry.negative_files(concept.id)]
        neg = (self.embedder.embed([read_photo(f).image for f in files]) @ train.T).max(axis=1).tolist() if files else []
        return calibrate(recognition_metrics(pos, neg))

    def evaluate_subject(self, subject: Subject) -> SubjectResults:
        concept = self.train(subject)
        others = [p for s in self.dataset.subjects.values() if s.name != subject.name for p in s.test]
        results = {}
        for method in self.methods:
            report(Scoring(subject.name, method.name))
            with self.identifier_for(method, subject.name):
                pos, neg = method.scores(self, subject.name, subject.test), method.scores(self, subject.name, others)
                threshold = method.threshold(self, subject.name, concept)
                at_half = recognition_metrics(pos, neg, 0.5 if method.cut_at_half else threshold)
                at_threshold = recognition_metrics(pos, neg, threshold)
                entry = MethodResult(Recognition(at_half["positive"], at_half["negative"], at_half["weighted"], auc(pos, neg),
                                                 threshold, at_threshold["weighted"]))
                if method.language:
                    entry = self.language_metrics(method, subject, entry)
                results[method.name] = method.extra(self, subject.name, entry)
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

    def language_metrics(self, method: Method, subject: Subject, entry: MethodResult) -> MethodResult:
        """The entry with the multiple-choice, caption and facts figures added."""
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
        return replace(entry, text_mcq=Choices(text_right / len(text) if text else None, len(text)),
                       visual_mcq=Choices(visual_right / len(visual) if visual else None, len(visual)),
                       caption_recall=Recall(recalled / len(captions), len(captions)),
                       facts=self.facts_metrics(method, subject.name))

    def facts_metrics(self, method: Method, subject: str) -> dict[str, Facts]:
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
                # the prompt and steering `ask` gives its users (use.ask.steered), facts and all
                fitted, guidance = steered(self.vlm, self.prompt(method, subject, item["question"], []),
                                           notes if in_prompt else [], FACT_TOKENS)
                answer = answered(self.vlm, fitted.prompt, guidance, FACT_TOKENS).lower()
                right.append(any(word.lower() in answer for word in item["answer_contains"]))
            asked = len(entry["questions"])
            out[setting] = Facts(sum(right[:asked]) / asked, asked, int(right[asked]) if entry.get("gift") else None)
        return out

    def forgetting_check(self) -> Forgetting:
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
        return Forgetting(same, len(prompts), same == len(prompts))
