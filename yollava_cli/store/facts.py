"""Personal facts: what a concept's owner knows and photos cannot show ("is scared of the vacuum
cleaner"). They are stored in the owner's words, never rewritten, and reach answers through the
concept's opening line (`<bo> is <bo_0>...<bo_15>. <bo> is scared of the vacuum cleaner.`), as
retrieval-augmented personalization does: a new fact works at once, with no retraining. When one
fact answers a question, photo or not, it is the answer (use.ask.quoted_note); when none does, a
text-only answer leans toward what the facts make likelier (use.ask.steered). They never
enter what the model generates about photos (captions, attribute conversations, questions about
the photo)."""

import re
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.store.concepts import AddResult, add_concept, get_concept
from yollava_cli.store.records import Concept, Fact
from yollava_cli.store.registry import Registry

MAX_CHARS = 500
MAX_FACTS = 100  # per concept: they all ride in every prompt about it
# C0 and C1 controls (a newline, a tab, NEL) and the Unicode line and paragraph separators: a fact is one line
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# bidirectional embeddings, overrides and isolates: they make a fact display in another order than
# it is stored and read (the marks U+200E/U+200F, which only set a direction, are fine)
BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
# what chat templates mark turns with (ChatML, Llama 3, Gemma, Mistral): refused at once here; the
# prompt encoder refuses every model's own control tokens, whatever they look like
CHAT_MARKUP = re.compile(r"<\|[^<>|\s]{1,40}\|>|<(?:start|end)_of_turn>|\[/?INST\]|</?s>")


def check_fact(text: str, where: str = "fact") -> str:
    """The fact as given (outer spaces trimmed), or a one-line error saying what to fix."""
    fact = text.strip()
    if not fact:
        raise UserError(f"{where} is empty: write what you know, e.g. \"is scared of the vacuum cleaner\"")
    if len(fact) > MAX_CHARS:
        raise UserError(f"{where} is {len(fact)} characters long; keep a fact under {MAX_CHARS} (split it in two)")
    if found := CONTROL.search(fact):
        raise UserError(f"{where} holds a control character or line break (U+{ord(found[0]):04X}: a newline or tab?); "
                        "give one fact per line")
    if found := BIDI.search(fact):
        raise UserError(f"{where} holds a bidirectional override (U+{ord(found[0]):04X}), which shows text in another "
                        "order than it is read; remove it")
    if found := CHAT_MARKUP.search(fact):
        raise UserError(f"{where} holds {found[0]!r}, a chat model's control token, which would speak for the system; "
                        "write it another way")
    return fact


def read_notes_file(path: Path) -> list[str]:
    """One fact a line; blank lines and lines starting with # are skipped, a byte-order mark too.
    Lines end only at \\n (and \\r\\n): a U+2028 inside a line is refused, not a break."""
    try:
        lines = path.read_bytes().decode("utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the notes file ({e}); give a UTF-8 text file, one fact a line") from None
    return [check_fact(line.removesuffix("\r"), f"{path} line {i}") for i, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]


def add_facts(registry: Registry, name: str, texts: list[str]) -> list[Fact]:
    """Append facts to a concept in one transaction (all or none); returns the full list."""
    facts = [check_fact(t) for t in texts]
    concept = get_concept(registry, name)
    with registry.transaction():
        append_facts(registry, concept, facts)
    return list_facts(registry, name)


def add_concept_with_facts(registry: Registry, raw_name: str, inputs: list[Path], texts: list[str], **options) -> AddResult:
    """`add NAME PHOTOS --note ...`: the photos and the facts in one transaction, so a fact that
    is refused (too many for the concept) leaves no concept and no photo behind."""
    facts = [check_fact(t) for t in texts]
    if len(facts) > MAX_FACTS:  # refused before a photo is decoded
        raise UserError(f"{len(facts)} facts given; the limit is {MAX_FACTS} per concept (keep the ones that matter)")
    return add_concept(registry, raw_name, inputs, **options,
                       with_concept=(lambda concept: append_facts(registry, concept, facts)) if facts else None)


def append_facts(registry: Registry, concept: Concept, facts: list[str]) -> None:
    """Inside the caller's transaction: the checked facts after the concept's, within MAX_FACTS."""
    count = len(registry.facts(concept.id))
    if count + len(facts) > MAX_FACTS:
        raise UserError(f"<{concept.name}> would have {count + len(facts)} facts; the limit is {MAX_FACTS} "
                        f"(remove some with `yollava note {concept.name} --rm N`)")
    registry.add_facts(concept.id, facts)


def set_facts(registry: Registry, name: str, texts: list[str]) -> None:
    """Make the concept's facts exactly these, in this order (eval notes a dataset's facts so)."""
    facts = [check_fact(t) for t in texts]
    if fact_texts(registry, name) == facts:
        return
    concept = get_concept(registry, name)
    registry.replace_facts(concept.id, facts)


def list_facts(registry: Registry, name: str) -> list[Fact]:
    """The concept's facts, numbered from 1 in the order they were noted."""
    return registry.facts(get_concept(registry, name).id)


def remove_fact(registry: Registry, name: str, number: int) -> Fact:
    """Remove fact `number` (as `note NAME` lists it); returns the removed fact."""
    concept = get_concept(registry, name)
    with registry.transaction():
        facts = registry.facts(concept.id)
        if not 1 <= number <= len(facts):
            raise UserError(f"<{concept.name}> has no fact {number}; `yollava note {concept.name}` lists "
                            f"{len(facts)} fact(s)")
        registry.remove_fact(concept.id, number)
    return facts[number - 1]


def fact_texts(registry: Registry, name: str) -> list[str]:
    return [f.text for f in list_facts(registry, name)]


def as_sentence(name: str, fact: str) -> str:
    """How a fact reads in the prompt: a predicate ("is 4 years old") gets its subject, and every
    fact ends like a sentence. The stored words are never changed."""
    identifier = f"<{name}>"
    sentence = fact if identifier in fact or fact[:1].isupper() else f"{identifier} {fact}"
    return sentence if sentence[-1:] in ".!?" else sentence + "."


def prompt_notes(registry: Registry, names: list[str]) -> list[str]:
    """Every fact of the given concepts, as the sentences their opening line carries."""
    return [as_sentence(name, fact) for name in names for fact in fact_texts(registry, name)]
