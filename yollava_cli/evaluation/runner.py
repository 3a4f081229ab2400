"""The paper's benchmark as one command: recognition, text-only and visual multiple choice, and
caption recall, for the trained soft tokens and the prompting baselines side by side.

Each dataset is evaluated in a registry of its own (under the data dir's eval/ folder), so
subjects never mix with the user's concepts and trained subjects are reused by later runs.
Finished subjects are written to a results file as they complete: an interrupted run resumes.
"""

import hashlib
import io
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from yollava_cli import __version__
from yollava_cli.models.vlm import VLM
from yollava_cli.use.ask import note_guidance
from yollava_cli.store.concepts import add_concept, parse_name
from yollava_cli.errors import UserError
from yollava_cli.learning.events import EmbeddingPool, EmbeddingToMine, Scoring, SubjectStarted
from yollava_cli.store.facts import as_sentence, set_facts
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.photos import read_photo
from yollava_cli.models.prompts import Prompt
from yollava_cli.store.registry import Registry, now
from yollava_cli.learning.synthesis import answer_once, score_question
from yollava_cli.learning.training import TrainConfig, calibrate, prepare_concept, recognition_metrics

ASK_TOKENS = 4
PETS = {"dog", "cat"}
CAPTION_PROMPT = "Describe this photo in one sentence."
SUBJECT_PROMPT = "Describe the main subject of this photo in one sentence."
FORGETTING_QUESTIONS = ("What is in this photo?", "What color is the main object?")
CAPTION_TOKENS = 32
FACT_TOKENS = 48
# The facts metric's settings, two per run: with and without the facts in the prompt, on tokens
# trained without them (facts_in_tokens off) or with them (on).
FACT_SETTINGS = {False: (("facts_prompt", True), ("facts_none", False)), True: (("facts_both", True), ("facts_tokens", False))}
FACT_LABELS = {"facts_none": "no facts (control)", "facts_prompt": "in the prompt", "facts_tokens": "in the tokens",
               "facts_both": "prompt and tokens"}


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


# -- metrics ----------------------------------------------------------------------------


def auc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def bootstrap_ci(values: list[float], rounds: int = 1000, seed: int = 0) -> list[float] | None:
    """95% interval of the mean, resampling subjects."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(rounds, len(values)), replace=True).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def mcq_prompt(item: dict) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in sorted(item["options"].items()))
    return f"{item['question']}\n{options}\nAnswer with the option's letter."


# -- the run ----------------------------------------------------------------------------


class Method:
    """One way to answer the benchmark: what the prompt carries, how a photo is scored for
    recognition, where its yes/no cut sits. The base class is the bare model (`vanilla`): the
    question names the identifier, which carries nothing."""

    name = "vanilla"
    language = True  # also asked the multiple-choice, caption and facts questions
    trained = False  # reads the concept's trained rows; the others see the identifier as a blank new word
    cut_at_half = True  # scores are probabilities, so 0.5 is a fair cut (cosine similarities are not)

    def concepts(self, subject: str) -> list[str]:
        return []

    def prefix(self, run: "Evaluation", subject: str) -> str:
        return ""

    def scores(self, run: "Evaluation", subject: str, photos: list[Path]) -> list[float]:
        return run.yes_probabilities(self, subject, photos)

    def threshold(self, run: "Evaluation", subject: str, concept: dict) -> float:
        return 0.5

    def start_rows(self, run: "Evaluation", subject: str) -> dict:
        """How the identifier's rows start for this method when it does not read the trained ones."""
        return {}

    def extra(self, run: "Evaluation", subject: str) -> dict:
        """Figures of this method's own, after its scores, beside the recognition entry."""
        return {}


class Yollava(Method):
    """The trained soft tokens, in the concept prompt: the paper's method."""

    name, trained = "yollava", True

    def concepts(self, subject):
        return [subject]

    def scores(self, run, subject, photos):
        key = (subject, tuple(photos))  # fused and ask build on these
        if key not in run.token_scores:
            run.token_scores[key] = run.yes_probabilities(self, subject, photos)
        return run.token_scores[key]

    def threshold(self, run, subject, concept):
        return concept["threshold"]


class WordInit(Yollava):
    """Training's starting point: the identifier at the base model's word for the subject, zero epochs."""

    name, language, trained = "word-init", False, False

    def scores(self, run, subject, photos):
        return run.yes_probabilities(self, subject, photos)

    def threshold(self, run, subject, concept):
        return 0.5

    def start_rows(self, run, subject):
        return {"seed": run.config.seed, "init_word": run.subject_word(subject)}


class Description(Method):
    """The human-written description of the subject before the question."""

    name = "description"

    def prefix(self, run, subject):
        return run.dataset.descriptions.get(subject, "")


class AutoDescription(Method):
    """The base model's own summary of the train photos before the question (paper Table 27)."""

    name = "auto-description"

    def prefix(self, run, subject):
        return run.auto_description(subject)


class Embedding(Method):
    """Cosine similarity of image embeddings to the subject's train photos."""

    name, language, cut_at_half = "embedding", False, False

    def scores(self, run, subject, photos):
        return run.similarities(subject, photos)

    def threshold(self, run, subject, concept):
        return run.embedding_threshold(subject, concept)


class Head(Method):
    """The concept head alone."""

    name, language, trained = "head", False, True

    def scores(self, run, subject, photos):
        return run.recognizer(subject).head_probabilities(run.vectors(photos))

    def threshold(self, run, subject, concept):
        return run.recognizer(subject).thresholds.get("head", 0.5)


class Fused(Head):
    """The head and the tokens, fused."""

    name = "fused"

    def scores(self, run, subject, photos):
        return run.recognizer(subject).fused_probabilities(run.vectors(photos), METHODS["yollava"].scores(run, subject, photos))

    def threshold(self, run, subject, concept):
        return run.recognizer(subject).thresholds.get("fused", 0.5)


class Ask(Method):
    """What a user sees: the free-text answer to the recognition question, with the fused verdict
    as its grounding line and settling its yes/no as `ask` does, read as yes (1) or no (0)."""

    name, language, trained = "ask", False, True

    def scores(self, run, subject, photos):
        fused, cut = METHODS["fused"].scores(run, subject, photos), run.recognizer(subject).thresholds.get("fused", 0.5)
        answers = []
        for path, probability in zip(photos, fused):
            prompt = run.prompt(METHODS["yollava"], subject, score_question(subject), [path])
            prompt.notes = [f"<{subject}> is {'' if probability >= cut else 'not '}in this photo."]
            answer = run.vlm.generate(prompt, max_new_tokens=ASK_TOKENS, yes=probability >= cut)
            answers.append(float(answer.lower().startswith("yes")))
            run.agreement.setdefault(subject, []).append(answers[-1] == (probability >= cut))
        return answers

    def extra(self, run, subject):
        agreed = run.agreement.pop(subject, [])
        return {"agreement_with_fused": {"rate": sum(agreed) / len(agreed), "n": len(agreed)}} if agreed else {}


METHODS = {m.name: m for m in (Yollava(), Method(), Description(), AutoDescription(), Embedding(), Head(), Fused(), Ask(), WordInit())}


class Evaluation:
    def __init__(self, dataset: Dataset, vlm: VLM, registry: Registry, embedder, methods: list[str],
                 config: TrainConfig, on_event: Callable[..., None]):
        self.dataset, self.vlm, self.registry, self.embedder = dataset, vlm, registry, embedder
        self.methods, self.config, self.on_event = [METHODS[m] for m in methods], config, on_event
        self.images: dict[Path, tuple] = {}
        self.auto_descriptions: dict[str, str] = {}
        self.embedded: dict[Path, np.ndarray] = {}
        self.token_scores: dict[tuple, list[float]] = {}
        self.agreement: dict[str, list[bool]] = {}  # ask's yes/no against the fused verdict, per photo
        self.recognizers: dict[str, object] = {}

    def photo(self, path: Path):
        if path not in self.images:
            photo = read_photo(path)
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
        from yollava_cli.learning.recognition import current

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
        from yollava_cli.learning.synthesis import subject_word

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
        if concept["status"] != "trained" or concept["base_fingerprint"] != self.vlm.fingerprint or other_config:
            prepare_concept(self.registry, subject.name, lambda: self.vlm, lambda: self.embedder, self.config,
                            on_progress=lambda done, total: self.on_event(EmbeddingToMine(done, total)),
                            on_event=self.on_event)
            concept = self.registry.concept(subject.name)
        if subject.name not in self.vlm.tokens:
            self.vlm.tokens.load(self.registry.root / self.registry.current_checkpoint(concept["id"])["file"])
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
        prompts = [self.prompt(METHODS["vanilla"], "", q, [p]) for p in photos for q in FORGETTING_QUESTIONS]
        loaded = {name: (*self.vlm.tokens.rows(name), self.vlm.tokens.latents(name)) for name in list(self.vlm.tokens)}
        with_concepts = [self.vlm.generate(p, max_new_tokens=CAPTION_TOKENS) for p in prompts]
        for name in loaded:
            self.vlm.tokens.remove(name)
        bare = [self.vlm.generate(p, max_new_tokens=CAPTION_TOKENS) for p in prompts]
        for name, (rows, head, k) in loaded.items():
            self.vlm.tokens.add(name, k, rows, head)
        same = sum(a == b for a, b in zip(with_concepts, bare))
        return {"passed": same == len(prompts), "identical": same, "compared": len(prompts), "concepts_loaded": len(loaded)}


def summarise(per_subject: dict[str, dict], methods: list[str]) -> dict:
    overall = {}
    for method in methods:
        rows = [r[method] for r in per_subject.values() if method in r]
        entry = {}
        for group, fields in (("recognition", ("positive", "negative", "weighted", "auc", "weighted_at_threshold")),
                              ("text_mcq", ("accuracy",)), ("visual_mcq", ("accuracy",)), ("caption_recall", ("recall",)),
                              ("agreement_with_fused", ("rate",)), *((setting, ("accuracy",)) for setting in FACT_LABELS)):
            present = [r[group] for r in rows if group in r]
            if not present:
                continue
            entry[group] = {}
            for name in fields:
                values = [p[name] for p in present if p.get(name) is not None]
                entry[group][name] = float(np.mean(values)) if values else None
                entry[group][f"{name}_ci95"] = bootstrap_ci(values)
            if "n" in present[0]:
                entry[group]["n"] = sum(p["n"] for p in present)
            if "gift_hits" in present[0]:
                gifts = [p["gift_hits"] for p in present if p["gift_hits"] is not None]
                entry[group]["gift_hits"], entry[group]["gift_asked"] = sum(gifts), len(gifts)
        overall[method] = entry
    return overall


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
                 pools: list[Path]) -> Path:
    settings = json.dumps([str(dataset.root.resolve()), model_fingerprint, sorted(methods), vars(config),
                           [str(p.resolve()) for p in pools], code_version()], sort_keys=True, default=str)
    return eval_root / f"results-{hashlib.sha256(settings.encode()).hexdigest()[:16]}.json"


def run_eval(dataset: Dataset, vlm: VLM, embedder, eval_root: Path, methods: list[str], pools: list[Path],
             config: TrainConfig | None = None, folds: int = 1, on_event: Callable[..., None] | None = None) -> dict:
    """Evaluate every subject (resuming finished ones), then summarise with intervals."""
    from yollava_cli.learning.mining import add_pool

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if len(dataset.subjects) < 2:
        raise UserError("eval needs at least 2 subjects: each subject's test negatives are the other subjects' "
                        "test photos; name another in --subjects")
    config = config or TrainConfig()
    on_event = on_event or (lambda event: None)
    start = time.perf_counter()
    folded = []
    for fold in range(folds):
        fold_data = rotate(dataset, fold) if folds > 1 else dataset
        registry = Registry(eval_root / f"fold{fold}")
        for i, pool in enumerate(pools):
            add_pool(registry, f"pool{i}", pool, embedder, lambda d, t: on_event(EmbeddingPool(d, t)))
        # every subject's train photos first, as a user's concepts: without --pool mining finds the
        # others' (subset or not), and each concept head knows the others
        for subject in [*fold_data.subjects.values(), *fold_data.others.values()]:
            add_concept(registry, subject.name, subject.train, kind=subject.kind)
        path = results_path(eval_root, fold_data, vlm.fingerprint, methods, config, pools).with_suffix(f".fold{fold}.json")
        done = json.loads(path.read_text()) if path.exists() else {}
        evaluation = Evaluation(fold_data, vlm, registry, embedder, methods, config, on_event)
        for index, subject in enumerate(fold_data.subjects.values()):
            on_event(SubjectStarted(subject.name, index, len(fold_data.subjects), fold, folds))
            if subject.name not in done:
                done[subject.name] = evaluation.evaluate_subject(subject)
                atomic_write_bytes(path, json.dumps(done, indent=1).encode())
            else:
                evaluation.train(subject)  # loaded for the forgetting check
        folded.append((done, evaluation.forgetting_check()))
    per_subject = {name: merge_folds([f[0][name] for f in folded]) for name in dataset.subjects}
    forgetting = {k: sum(f[1][k] for f in folded) for k in ("identical", "compared")}
    forgetting["passed"] = all(f[1]["passed"] for f in folded)
    return {"model": vlm.ref, "dataset": str(dataset.root), "methods": summarise(per_subject, methods),
            "subjects": per_subject, "forgetting": forgetting, "folds": folds,
            "negatives": f"pools {', '.join(map(str, pools))}" if pools else "other subjects' train photos",
            "wall_s": round(time.perf_counter() - start, 1), "finished_at": now()}


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


def merge_folds(results: list[dict]) -> dict:
    """One subject's results over folds: counts add up, everything else is averaged."""
    merged = {}
    for method, groups in results[0].items():
        merged[method] = {}
        for group, values in groups.items():
            merged[method][group] = {}
            for key in values:
                found = [r[method][group][key] for r in results if r[method][group][key] is not None]
                counted = key in ("n", "gift_hits")
                merged[method][group][key] = None if not found else sum(found) if counted else float(np.mean(found))
    return merged


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


def write_report(result: dict, folder: Path) -> list[Path]:
    """report.json, report.md and chart.png (weighted recognition and MCQ accuracy per method)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "report.json", json.dumps(result, indent=2).encode())
    atomic_write_bytes(folder / "report.md", markdown(result).encode())
    chart(result, folder / "chart.png")
    return [folder / "report.json", folder / "report.md", folder / "chart.png"]


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(result: dict) -> str:
    lines = [f"# yollava eval: {result['dataset']}", "",
             f"Model `{result['model']}`, {len(result['subjects'])} subjects, {result['folds']} fold(s), "
             f"negatives from {result['negatives']}, {result['wall_s']} s.", "",
             "| method | positive | negative | weighted (95% CI) | AUC | text MCQ | visual MCQ | caption recall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, m in result["methods"].items():
        r = m.get("recognition", {})
        ci = r.get("weighted_ci95")
        lines.append(f"| {method} | {fmt(r.get('positive'))} | {fmt(r.get('negative'))} | {fmt(r.get('weighted'))}"
                     f"{f' ({ci[0]:.2f}-{ci[1]:.2f})' if ci else ''} | {fmt(r.get('auc'))} | "
                     f"{fmt(m.get('text_mcq', {}).get('accuracy'))} | {fmt(m.get('visual_mcq', {}).get('accuracy'))} | "
                     f"{fmt(m.get('caption_recall', {}).get('recall'))} |")
    lines += ["", "## Weighted recognition per subject", "",
              "| subject | " + " | ".join(result["methods"]) + " |", "| --- |" + " --- |" * len(result["methods"])]
    for subject, methods in result["subjects"].items():
        lines.append(f"| {subject} | " + " | ".join(fmt(methods.get(m, {}).get("recognition", {}).get("weighted")) for m in result["methods"]) + " |")
    for method, m in result["methods"].items():
        if m.get("agreement_with_fused", {}).get("rate") is not None:
            lines += ["", f"`{method}` answered with the fused verdict's yes or no on {m['agreement_with_fused']['rate']:.3f} "
                          f"of {m['agreement_with_fused']['n']} photos."]
    settings = [s for s in FACT_LABELS if any(s in m for m in result["methods"].values())]
    if settings:
        lines += ["", "## Personal facts (accuracy on questions about noted facts; gift answers that build on one)", "",
                  "| method | " + " | ".join(f"{FACT_LABELS[s]} | gift hits" for s in settings) + " |",
                  "| --- |" + " --- | --- |" * len(settings)]
        for method, m in result["methods"].items():
            if any(s in m for s in settings):
                lines.append(f"| {method} | " + " | ".join(
                    f"{fmt(m.get(s, {}).get('accuracy'))} | {m.get(s, {}).get('gift_hits', 0)}/{m.get(s, {}).get('gift_asked', 0)}"
                    for s in settings) + " |")
    f = result["forgetting"]
    lines += ["", f"Forgetting check: {'PASS' if f['passed'] else 'FAIL'} ({f['identical']}/{f['compared']} answers identical "
              "to the bare base model with every concept loaded).",
              "Generic questions about photos (no concept named) are asked with and without the trained concepts loaded; "
              "PASS means every answer came out identical, so loading concepts changed nothing else. FAIL means some "
              "answer changed: the concept tokens leak into unrelated answers.", ""]
    return "\n".join(lines)


def chart(result: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    series = [("weighted recognition", "recognition", "weighted", (52, 101, 164)),
              ("text MCQ", "text_mcq", "accuracy", (115, 210, 22)), ("visual MCQ", "visual_mcq", "accuracy", (245, 121, 0))]
    methods = list(result["methods"])
    width, height, left, bottom = 140 * len(methods) + 80, 360, 50, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot = height - bottom - 40
    for tick in range(0, 11, 2):
        y = height - bottom - plot * tick / 10
        draw.line([(left, y), (width - 10, y)], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{tick / 10:.1f}", fill="black")
    for i, method in enumerate(methods):
        x0 = left + 20 + i * 140
        for j, (_, group, key, color) in enumerate(series):
            value = result["methods"][method].get(group, {}).get(key)
            if value is not None:
                draw.rectangle([x0 + j * 36, height - bottom - plot * value, x0 + j * 36 + 30, height - bottom], fill=color)
        draw.text((x0, height - bottom + 8), method, fill="black")
    for j, (label, _, _, color) in enumerate(series):
        draw.rectangle([left + j * 170, 10, left + j * 170 + 12, 22], fill=color)
        draw.text((left + j * 170 + 18, 10), label, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
