"""Personal facts (`note`): stored in the owner's words, carried in the concept's opening line,
travelling in bundles, checked by doctor."""

import json
import sqlite3

from conftest import invoke
from PIL import Image
from tiny import tiny_llava

from yollava_cli.models.concept_tokens import concept_prompt
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.store.facts import as_sentence, prompt_notes
from yollava_cli.store.registry import Registry


def photo_folder(tmp_path):
    folder = tmp_path / "bo"
    folder.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (64, 48), color).save(folder / f"{i}.jpg")
    return folder


def test_note_adds_lists_and_removes_in_the_owners_words(home, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("# about bo\nloves chasing tennis balls\n\n<bo> is scared of the vacuum cleaner.\n")
    added = invoke("add", "bo", photo_folder(tmp_path), "--no-train", "--note", "is 4 years old",
                    "--notes-file", notes, "--json", home=home)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["facts_added"] == 3
    assert invoke("note", "bo", "Bo's birthday is on May 3", home=home).returncode == 0
    listed = invoke("note", "bo", home=home).stdout.splitlines()
    assert listed == ["1\tis 4 years old", "2\tloves chasing tennis balls",
                      "3\t<bo> is scared of the vacuum cleaner.", "4\tBo's birthday is on May 3"]
    removed = json.loads(invoke("note", "bo", "--rm", "2", "--json", home=home).stdout)
    assert removed["removed"]["text"] == "loves chasing tennis balls"
    shown = json.loads(invoke("show", "bo", "--json", home=home).stdout)
    assert [f["text"] for f in shown["facts"]] == ["is 4 years old", "<bo> is scared of the vacuum cleaner.",
                                                    "Bo's birthday is on May 3"]
    assert "fact 2: <bo> is scared of the vacuum cleaner." in invoke("show", "bo", home=home).stdout


def test_a_bad_fact_in_add_stores_nothing(home, tmp_path):
    result = invoke("add", "bo", photo_folder(tmp_path), "--no-train", "--note", "ok", "--note", "a\nb", home=home)
    assert result.returncode == 1 and "control character" in result.stderr and "Traceback" not in result.stderr
    assert Registry(home).concept("bo") is None


def test_facts_ride_in_the_opening_line_after_the_concept_prompt(home, tmp_path):
    assert invoke("add", "bo", photo_folder(tmp_path), "--no-train", "--note", "is 4 years old",
                   "--note", "Bo sleeps a lot", home=home).returncode == 0
    notes = prompt_notes(Registry(home), ["bo"])
    assert notes == ["<bo> is 4 years old.", "Bo sleeps a lot."]
    assert as_sentence("bo", "<bo> loves balls!") == "<bo> loves balls!"
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 2)
    text = vlm.prompts.render(Prompt("How old is <bo>?", concepts=["bo"], notes=notes))
    assert f"{concept_prompt('bo', 2)} <bo> is 4 years old. Bo sleeps a lot.\nHow old is <bo>?" in text


def test_doctor_reports_a_fact_written_around_note(home, tmp_path):
    assert invoke("add", "bo", photo_folder(tmp_path), "--no-train", "--note", "fine", home=home).returncode == 0
    conn = sqlite3.connect(home / "registry.db")
    conn.execute("UPDATE facts SET text = 'two\nlines'")
    conn.commit()
    conn.close()
    result = invoke("doctor", "--fix", home=home)
    assert result.returncode == 1 and "fact: <bo>" in result.stderr
    assert Registry(home).facts(Registry(home).concept("bo")["id"])[0]["text"] == "two\nlines"  # never rewritten


def test_facts_in_tokens_become_text_only_conversations_each_epoch():
    """With facts_in_tokens, every epoch trains each fact once (a generic question about the
    concept answered in the owner's words, no photo); without it, none of them."""
    from yollava_cli.learning.synthesis import TrainingData, fact_conversations
    from yollava_cli.learning.train_config import TrainConfig
    from yollava_cli.learning.training import epoch_examples, split_data

    facts = ["is 4 years old", "<bo> is scared of the vacuum cleaner."]
    data = TrainingData([f"p{i}" for i in range(5)], [(f"n{i}", "hard") for i in range(10)], [("What color is <bo>?", "Brown.")],
                        "dog", [fact_conversations("bo", fact) for fact in facts])
    config = TrainConfig(facts_in_tokens=True)
    for epoch in range(3):
        answers = [e.answer for e in epoch_examples("bo", split_data(data, config), epoch, config) if e.image is None]
        assert answers.count("<bo> is 4 years old.") == 1 and answers.count("<bo> is scared of the vacuum cleaner.") == 1
    questions = {q for q, _ in fact_conversations("bo", facts[0])}
    assert len(questions) >= 8 and all("<bo>" in q for q in questions)
    plain = TrainingData(*(getattr(data, f) for f in ("positives", "negatives", "attributes", "subject_word")))
    assert plain.hash != data.hash  # a new fact marks the data (and a resume) as changed
    assert all("is 4 years old" not in e.answer for e in epoch_examples("bo", split_data(plain, config), 0, config))
