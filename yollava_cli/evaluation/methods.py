"""The ways an eval answers the benchmark, one small class each: the trained soft tokens, the
prompting baselines, the image-embedding reference, the concept head, the fusion and the answer a
user reads. A run builds its own (`build_methods`), so what a method remembers is its own."""

from pathlib import Path
from typing import Any, Protocol

from yollava_cli.errors import UserError
from yollava_cli.learning.synthesis import score_question


ASK_TOKENS = 4


class Run(Protocol):
    """What a method may use of the run it is scored in (runner.Evaluation provides it); declared
    here so that methods need not import the runner that imports them."""

    registry: Any
    dataset: Any
    config: Any
    vlm: Any

    def yes_probabilities(self, method: "Method", subject: str, photos: list[Path]) -> list[float]: ...
    def subject_word(self, subject: str) -> str | None: ...
    def auto_description(self, subject: str) -> str: ...
    def similarities(self, subject: str, photos: list[Path]) -> list[float]: ...
    def embedding_threshold(self, subject: str, concept: dict) -> float: ...
    def recognizer(self, subject: str) -> Any: ...
    def vectors(self, photos: list[Path]) -> Any: ...
    def prompt(self, method: "Method", subject: str, question: str, photos: list[Path]) -> Any: ...


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

    def prefix(self, run: Run, subject: str) -> str:
        return ""

    def scores(self, run: Run, subject: str, photos: list[Path]) -> list[float]:
        return run.yes_probabilities(self, subject, photos)

    def threshold(self, run: Run, subject: str, concept: dict) -> float:
        return 0.5

    def start_rows(self, run: Run, subject: str) -> dict:
        """How the identifier's rows start for this method when it does not read the trained ones."""
        return {}

    def extra(self, run: Run, subject: str) -> dict:
        """Figures of this method's own, after its scores, beside the recognition entry."""
        return {}


class Yollava(Method):
    """The trained soft tokens, in the concept prompt: the paper's method."""

    name, trained = "yollava", True

    def concepts(self, subject):
        return [subject]

    def __init__(self):
        self.scored: dict[tuple, list[float]] = {}  # fused and ask build on these

    def scores(self, run, subject, photos):
        key = (subject, tuple(photos))
        if key not in self.scored:
            self.scored[key] = run.yes_probabilities(self, subject, photos)
        return self.scored[key]

    def threshold(self, run, subject, concept):
        return run.registry.thresholds(concept["id"])["tokens"]


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
        return run.registry.thresholds(concept["id"]).get("head", 0.5)


class Fused(Head):
    """The head and the tokens, fused."""

    name = "fused"

    def __init__(self, tokens: Yollava):
        self.tokens = tokens

    def scores(self, run, subject, photos):
        return run.recognizer(subject).fused_probabilities(run.vectors(photos), self.tokens.scores(run, subject, photos))

    def threshold(self, run, subject, concept):
        return run.registry.thresholds(concept["id"]).get("fused", 0.5)


class Ask(Method):
    """What a user sees: the free-text answer to the recognition question, with the fused verdict
    as its grounding line and settling its yes/no as `ask` does, read as yes (1) or no (0)."""

    name, language, trained = "ask", False, True

    def __init__(self, fused: Fused):
        self.fused = fused
        self.agreement: dict[str, list[bool]] = {}  # per subject: each answer's yes/no against the fused verdict

    def scores(self, run, subject, photos):
        fused, cut = self.fused.scores(run, subject, photos), self.fused.threshold(run, subject, run.registry.concept(subject))
        answers = []
        for path, probability in zip(photos, fused):
            prompt = run.prompt(self.fused.tokens, subject, score_question(subject), [path])
            prompt.notes = [f"<{subject}> is {'' if probability >= cut else 'not '}in this photo."]
            answer = run.vlm.generate(prompt, max_new_tokens=ASK_TOKENS, yes=probability >= cut)
            answers.append(float(answer.lower().startswith("yes")))
            self.agreement.setdefault(subject, []).append(answers[-1] == (probability >= cut))
        return answers

    def extra(self, run, subject):
        agreed = self.agreement.pop(subject, [])
        return {"agreement_with_fused": {"rate": sum(agreed) / len(agreed), "n": len(agreed)}} if agreed else {}


NAMES = ("yollava", "vanilla", "description", "auto-description", "embedding", "head", "fused", "ask", "word-init")


def build_methods(names: list[str]) -> list[Method]:
    """Fresh methods for one run, in the order asked; fused reads the tokens' scores and ask the
    fused verdict, each through the instance it was built with."""
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    tokens = Yollava()
    fused = Fused(tokens)
    made = {m.name: m for m in (tokens, Method(), Description(), AutoDescription(), Embedding(), Head(), fused, Ask(fused), WordInit())}
    return [made[n] for n in names]
