"""Progress that does not mislead: each long step names itself, counts what it can, and its bar
ends with it."""

import dataclasses
import io
import subprocess
import sys

import pytest
from rich.console import Console
from rich.progress import Progress
from tiny import tiny_llava

from yollava_cli.cli.render import Display, showing
from yollava_cli.learning import events
from yollava_cli.models.decoding import Sampling
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import Counted, Status, collecting, report
from yollava_cli.use.explain import explain


def view(epochs: int = 15) -> Display:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    return Display(Progress(console=console), epochs)


def shown(display: Display) -> list[tuple[str, float, float | None]]:
    return [(t.description, t.completed, t.total) for t in display.bar.tasks]


def test_training_counts_one_epoch_at_a_time_and_names_each_step():
    v = view(epochs=15)
    v(events.WritingConversations(12, 30))
    assert shown(v) == [("Writing attribute conversations", 12, 30)]
    v(events.EpochStarted(0, 6))
    v(events.Step(0, 3, 6, 1.25))
    # early stopping may end after any epoch: a bar over all 15 (90 steps) promised a wrong ETA and froze at 30/90
    assert shown(v) == [("Training epoch 1 (of at most 15)", 3, 6)]
    v(events.Validating(0, 6))
    assert shown(v) == [("Training epoch 1 (of at most 15)", 6, 6)]
    v(events.EpochStarted(1, 6))
    assert shown(v) == [("Training epoch 2 (of at most 15)", 0, 6)]
    v(events.EmbeddingToMine(5, 40))
    assert shown(v) == [("Embedding photos to mine negatives", 5, 40)]
    v.note("<dog> (1/2, fold 1/1)")
    assert shown(v) == []
    with showing(15) as v:
        assert v.bar.live.transient  # the bars are cleared at the end, not left frozen
        report(events.EpochStarted(0, 6))  # deep code reports to it, with no callback passed down
        assert shown(v) == [("Training epoch 1 (of at most 15)", 0, 6)]


def test_the_view_renders_every_event_and_refuses_anything_else():
    """After each event: the one bar it shows (label, done, total, the info beside it) and the
    lines it printed."""
    validation = {"weighted": 0.75, "positive": 1.0, "negative": 0.5}
    epoch_1 = "Training epoch 1 (of at most 15)"
    expected = [
        (events.WritingConversations(1, 2), [("Writing attribute conversations", 1, 2, "")], []),
        (events.EpochStarted(0, 6), [(epoch_1, 0, 6, "")], []),
        (events.Step(0, 1, 6, 0.5), [(epoch_1, 1, 6, "loss 0.500")], []),
        (events.Validating(0, 6), [(epoch_1, 6, 6, "validating")], []),
        (events.EpochDone(1, 0.5, 0.9, validation), [(epoch_1, 6, 6, "validating")],
         ["epoch  1: loss 0.500  train acc 0.90  validation acc 0.75 (positive 1.00, negative 0.50)"]),
        (events.FittingHead(), [], ["Fitting the concept head and its fusion with the tokens..."]),
        (events.EmbeddingPool(1, 2), [("Embedding the pool's photos", 1, 2, "")], []),
        (events.EmbeddingToMine(1, 2), [("Embedding photos to mine negatives", 1, 2, "")], []),
        (events.SubjectStarted("dog", 0, 2, 0, 1), [], ["<dog> (1/2, fold 1/1)"]),
        (events.Scoring("dog", "yollava"), [], ["  scoring with yollava"]),
        (events.SubjectsEvaluated(1, 3), [("Evaluating subjects", 1, 3, "")], []),
        (events.EmbeddingPhotos(1, 2), [("Embedding photos", 1, 2, "")], []),
        (events.ScanningPool(4, None), [("Scanning the pool's folder", 4, None, "")], []),
        (events.ScoringPhotos(1, 2), [("Scoring photos", 1, 2, "")], []),
        (events.ExplainingTokens(1, 2), [("Explaining the latent tokens", 1, 2, "")], []),
        (events.ConceptsTrained(1, 2), [("Training concepts", 1, 2, "")], []),
        (Status("Mining negatives for <dog>..."), [("Training concepts", 1, 2, "")], ["Mining negatives for <dog>..."]),
    ]
    every = {c for c in vars(events).values() if isinstance(c, type) and dataclasses.is_dataclass(c) and c is not Counted}
    assert {type(e) for e, _, _ in expected} == every | {Status}  # a new event must be rendered too
    printed = io.StringIO()
    v = Display(Progress(console=Console(file=printed, force_terminal=False, width=200)), 15)
    for event, bars, lines in expected:
        before = printed.getvalue()
        v(event)
        assert [(t.description, t.completed, t.total, t.fields["info"]) for t in v.bar.tasks] == bars, event
        assert printed.getvalue()[len(before):].splitlines() == lines, event
    with pytest.raises(TypeError):  # what the old ("step", **info) calls were: now an error, not ignored
        v("step")


def test_explain_counts_the_tokens():
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 3)
    with collecting() as counted:
        explain(vlm, "bo", Sampling(max_new_tokens=2))
    assert counted == [events.ExplainingTokens(1, 3), events.ExplainingTokens(2, 3), events.ExplainingTokens(3, 3)]


def test_piped_progress_prints_nothing_of_its_own():
    """With stderr piped (find's scores on stdout, its notes on stderr) a bar adds no blank line:
    stderr carries the step lines only."""
    code = ("from yollava_cli.cli.render import showing\nfrom yollava_cli.learning import events\n"
            "from yollava_cli.reporting import report\n"
            "with showing(labels={events.ScoringPhotos: 'Looking for <bo>'}, waiting='Looking for <bo>'):\n"
            "    report(events.ScoringPhotos(1, 2))\n"
            "with showing(2):\n    report(events.FittingHead())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "Fitting the concept head and its fusion with the tokens...\n"
