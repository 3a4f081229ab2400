"""Training data for a concept (paper sec. 3.2-3.3, appendix F-G), built once and cached.

Recognition: the concept's photos (and their mirror images) with the 30 positive question/answer
templates, its negatives with the 30 negative ones. Attribute conversations: the base model
answers 10 questions about each photo under a neutral name ("this subject", or "Riley" for
people); the name is replaced by the identifier and the pair is trained *without* the photo, so
the tokens themselves must carry the appearance. Only answers that say something are kept, each
once (`worth_learning`). Fact conversations (only when training puts the
owner's facts in the tokens): generic questions about the concept answered with one fact, in the
owner's words; the model never writes them.
"""

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources

from PIL import Image

from yollava_cli.learning.events import WritingConversations
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import report
from yollava_cli.store.facts import as_sentence
from yollava_cli.store.records import Concept, StoredPhoto
from yollava_cli.store.registry import Registry

ATTRIBUTE_MAX_TOKENS = 48  # short answers keep training sequences (and steps) short
SUBJECT_QUESTION = "What is the main subject of this photo? Answer with one word."
ARTICLES = {"a", "an", "the", "this", "it", "is"}
# words that carry no attribute: an answer made only of these, the question's own words and the
# subject's class ("A dog.", "What color is <bo>? A color.") teaches the tokens nothing
FILLER = ARTICLES | {"its", "that", "are", "was", "of", "and", "or", "with", "in", "on", "to", "has", "have",
                     "be", "very", "some", "any", "yes", "no", "not", "there", "subject", "object", "thing",
                     "type", "kind", "photo", "image", "picture"}
LABEL_QUESTION = "What type of object is this subject?"  # answered with the label where nothing better is said


@cache
def templates() -> dict:
    return json.loads(resources.files("yollava_cli").joinpath("data/templates.json").read_text())


def identifier(name: str) -> str:
    return f"<{name}>"


def recognition_pair(name: str, positive: bool, index: int) -> tuple[str, str]:
    table = templates()["recognition"]["positive" if positive else "negative"]
    pair = table[index % len(table)]
    return pair["question"].format(sks=identifier(name)), pair["answer"].format(sks=identifier(name))


def score_question(name: str) -> str:
    """The recognition question scored by yes/no probability (template 1 starts with Yes / No)."""
    return templates()["score_question"].format(sks=identifier(name))


def asks_if_present(question: str, name: str) -> bool:
    """Whether the question is one of the recognition templates about <name> ("Is <bo> in this
    photo?", "Can you see <bo> in this image?", ...): the one question the recognizer answers."""
    def norm(text: str) -> str:
        return " ".join(re.sub(r"[^\w<>' ]", " ", text.lower()).split())

    table = templates()["recognition"]["positive"] + templates()["recognition"]["negative"]
    return norm(question) in {norm(pair["question"].format(sks=identifier(name))) for pair in table}


@dataclass
class TrainingData:
    positives: list[str]  # photo sha256s of the concept
    negatives: list[tuple[str, str]]  # (sha256, hard|easy)
    attributes: list[tuple[str, str]]  # (question, answer) with the identifier, no photo
    subject_word: str | None = None  # what the base model calls the subject: the identifier's start
    facts: list[list[tuple[str, str]]] = field(default_factory=list)  # per fact, its (question, answer) pairs

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def build_training_data(registry: Registry, vlm: VLM, concept: Concept, facts: list[str] = ()) -> TrainingData:
    photos = registry.concept_photos(concept.id)
    negatives = registry.negatives(concept.id)
    word = subject_word(registry, vlm, photos)
    attributes = [(q, a) for _, q, a in attribute_conversations(registry, vlm, concept, photos, word)]
    return TrainingData([p.sha256 for p in photos], negatives, attributes, word,
                        [fact_conversations(concept.name, fact) for fact in facts])


def fact_conversations(name: str, fact: str) -> list[tuple[str, str]]:
    """Each generic question about the concept ("What do you know about <bo>?") answered with the
    fact as its sentence reads in prompts."""
    return [(question.format(sks=identifier(name)), as_sentence(name, fact)) for question in templates()["facts"]["questions"]]


def attribute_conversations(registry: Registry, vlm: VLM, concept: Concept, photos: list[StoredPhoto],
                            label: str | None) -> list[tuple[str, str, str]]:
    """(photo, question, answer) worth learning (`worth_learning`) from the base model's answers
    about each photo; `label`: what the base model calls the subject (subject_word)."""
    spec = templates()["attributes"]["person" if concept.kind == "person" else "other"]
    total = len(photos) * len(spec["questions"])
    said, done = [], 0
    for photo in photos:
        for question in spec["questions"]:
            prompt = Prompt(question, [photo_loader(registry, photo)], [photo.sha256])
            said.append((photo.sha256, question, answer_once(registry, vlm, photo.sha256, question, prompt, ATTRIBUTE_MAX_TOKENS)))
            done += 1
            report(WritingConversations(done, total))
    return worth_learning(said, concept, label)


def worth_learning(said: list[tuple[str, str, str]], concept: Concept, label: str | None) -> list[tuple[str, str, str]]:
    """The (photo, question, answer) triples training learns from, renamed to the identifier: an
    answer that carries no attribute (only filler, the question's own words, the subject's class:
    "A dog.", "What color is <bo>? A color.") or not the kind asked for ("What color is <bo>? A
    Pembroke.") is dropped, and an answer already kept for the question is kept once. Where no
    answer to the type question survives, the label and the owner's kind answer it ("<bo> is a
    pet dog.")."""
    spec = templates()["attributes"]["person" if concept.kind == "person" else "other"]
    name, neutral = concept.name, spec["neutral_name"]
    known = set(words(label or "")) | {concept.kind}
    kept, seen = [], set()
    for photo, question, answer in said:
        plain = set(words(rename(question, neutral, name))) | set(words(neutral))
        key = (question, " ".join(words(answer)))
        if answer and key not in seen and set(words(answer)) - FILLER - plain - known and names_what_is_asked(question, answer):
            seen.add(key)
            kept.append((photo, rename(question, neutral, name), rename(answer, neutral, name)))
    asked = rename(LABEL_QUESTION, neutral, name)
    if LABEL_QUESTION in spec["questions"] and said and not any(question == asked for _, question, _ in kept):
        kept.append((said[0][0], asked, label_answer(name, concept.kind, label)))
    return kept


def names_what_is_asked(question: str, answer: str) -> bool:
    """Whether an answer to a question asking for a colour, material, shape, size or texture names
    one (templates.json "answer_words"); a small model answers "What color is it?" with a breed,
    and the tokens would learn the breed as a colour. Other questions pass."""
    asked, said = set(words(question)), set(words(answer))
    for kind in templates()["answer_words"].values():
        if isinstance(kind, dict) and asked & set(kind["asked_by"].split()):
            return bool(said & set(kind["words"].split())) or bool(kind["numbers"] and re.search(r"\d", answer))
    return True


def label_answer(name: str, kind: str, label: str | None) -> str:
    """'<bo> is a pet dog.', '<bo> is a backpack.' (an object is no news), '<bo> is a pet.'"""
    what = " ".join(w for w in (kind if kind != "object" else None, label) if w) or "thing"
    return f"{identifier(name)} is {'an' if what[0] in 'aeiou' else 'a'} {what}."


def words(text: str) -> list[str]:
    """Lowercased words, a concept's identifier left out."""
    return re.findall(r"[a-z]+", re.sub(r"<[^>]*>", " ", text.lower()))


def photo_loader(registry: Registry, photo: StoredPhoto) -> Callable[[], Image.Image]:
    """The stored photo, decoded only if the model's feature cache does not already hold it."""
    return lambda: Image.open(registry.root / photo.file).convert("RGB")


def subject_word(registry: Registry, vlm: VLM, photos: list[StoredPhoto]) -> str | None:
    """The base model's most frequent one-word name for the subject across the photos ("dog").
    Starting the identifier there makes "Is <bo> in this photo?" mean "is a dog in it" from step 0;
    from the neutral start a small model says yes to every photo and training mostly learns "no"."""
    answers = [answer_once(registry, vlm, p.sha256, SUBJECT_QUESTION,
                           Prompt(SUBJECT_QUESTION, [photo_loader(registry, p)], [p.sha256]), 8) for p in photos]
    return most_common_word(answers)


def most_common_word(answers: list[str]) -> str | None:
    """'A dog.', 'Dog', 'a cat!' -> 'dog': up to two content words per answer, the most frequent."""
    words = []
    for answer in answers:
        content = [w for w in re.findall(r"[a-z][a-z-]*", answer.lower()) if w not in ARTICLES]
        if content:
            words.append(" ".join(content[:2]))
    return Counter(words).most_common(1)[0][0] if words else None


def rename(text: str, neutral: str, name: str) -> str:
    """'this subject' / 'Riley' (any case) becomes the identifier, as the paper does."""
    return re.sub(re.escape(neutral), identifier(name), text, flags=re.IGNORECASE)


def answer_once(registry: Registry, vlm: VLM, key: str, question: str, prompt: Prompt, max_new_tokens: int) -> str:
    """The base model's answer to `question` about `key` (a photo's hash, or a text's): generated
    once per base model, then read from the registry (training data, eval's baselines)."""
    answer = registry.cached_answer(key, vlm.fingerprint, question)
    if answer is None:
        answer = vlm.generate(prompt, max_new_tokens=max_new_tokens)
        registry.store_answer(key, vlm.fingerprint, question, answer)
    return answer


def inspect_training_data(registry: Registry, concept: Concept) -> dict:
    """What training used (for `show --data`): counts, and the attribute conversations cached for
    the base model the concept was trained on. Generates nothing."""
    spec = templates()["attributes"]["person" if concept.kind == "person" else "other"]
    photos = registry.concept_photos(concept.id)
    fingerprint = concept.base_fingerprint or ""
    said = [(photo.sha256, question, answer) for photo in photos for question in spec["questions"]
            if (answer := registry.cached_answer(photo.sha256, fingerprint, question))]
    names = [registry.cached_answer(p.sha256, fingerprint, SUBJECT_QUESTION) for p in photos]
    label = most_common_word([n for n in names if n])
    conversations = [{"photo": sha[:12], "question": question, "answer": answer}
                     for sha, question, answer in worth_learning(said, concept, label)]
    kinds = registry.negative_counts(concept.id)
    return {"positive_photos": len(photos), "positive_views": 2 * len(photos), "hard_negatives": kinds.get("hard", 0),
            "easy_negatives": kinds.get("easy", 0), "recognition_templates": {side: len(pairs) for side, pairs in templates()["recognition"].items()},
            "subject_word": label, "attribute_conversations": conversations}
