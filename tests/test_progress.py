"""Progress that does not mislead: each long step names itself, counts what it can, and its bar
ends with it."""

import io
import subprocess
import sys
from typing import get_args

import pytest
from rich.console import Console
from rich.progress import Progress
from tiny import tiny_llava

from yollava_cli.cli.render import TrainView, train_view
from yollava_cli.learning import events
from yollava_cli.models.vlm import VLM
from yollava_cli.use.ask import GenerationOptions
from yollava_cli.use.explain import explain


def view(epochs: int = 15) -> TrainView:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    return TrainView(Progress(console=console), epochs)


def shown(train_view: TrainView) -> list[tuple[str, float, float | None]]:
    return [(t.description, t.completed, t.total) for t in train_view.bar.tasks]


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
    v.embedding(5, 40)
    assert shown(v) == [("Embedding photos to mine negatives", 5, 40)]
    v.note("<dog> (1/2, fold 1/1)")
    assert shown(v) == []
    with train_view(15) as v:
        assert v.bar.live.transient  # the bars are cleared at the end, not left frozen


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
    ]
    assert {type(e) for e, _, _ in expected} == set(get_args(events.EvalEvent))  # a new event must be rendered too
    printed = io.StringIO()
    v = TrainView(Progress(console=Console(file=printed, force_terminal=False, width=200)), 15)
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
    counted = []
    explain(vlm, "bo", GenerationOptions(max_tokens=2), lambda done, total: counted.append((done, total)))
    assert counted == [(1, 3), (2, 3), (3, 3)]


def test_piped_progress_prints_nothing_of_its_own():
    """With stderr piped (find's scores on stdout, its notes on stderr) a bar adds no blank line:
    stderr carries the step lines only."""
    code = ("from yollava_cli.cli.output import progress_bar\nfrom yollava_cli.cli.render import train_view\n"
            "from yollava_cli.learning import events\n"
            "with progress_bar('Looking for <bo>') as update:\n    update(1, 2)\n"
            "with train_view(2) as view:\n    view(events.FittingHead())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "Fitting the concept head and its fusion with the tokens...\n"
