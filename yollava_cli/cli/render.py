"""Rendering long work and concepts: the progress bars and lines of what long work reports
(yollava_cli.reporting), the training summary, and `show`."""

import shlex
from contextlib import contextmanager

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from yollava_cli.cli.output import err, line, out, print_json, print_table, status
from yollava_cli.learning import events
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.reporting import Counted, Status, reporting
from yollava_cli.store.registry import Registry


# what each counted step's bar says; a command may name its own (`showing(labels=...)`)
LABELS = {
    events.EmbeddingPhotos: "Embedding photos",
    events.ScanningPool: "Scanning the pool's folder",
    events.EmbeddingPool: "Embedding the pool's photos",
    events.EmbeddingToMine: "Embedding photos to mine negatives",
    events.WritingConversations: "Writing attribute conversations",
    events.ScoringPhotos: "Scoring photos",
    events.ExplainingTokens: "Explaining the latent tokens",
    events.SubjectsEvaluated: "Evaluating subjects",
    events.ConceptsTrained: "Training concepts",
}


class Display:
    """The CLI's reporter while long work runs: a counted bar for each step that takes a while
    (embedding, the attribute conversations, each epoch), a line per epoch and per status; the bars
    are cleared at the end."""

    def __init__(self, bar: Progress, epochs: int | None = None, labels: dict | None = None):
        self.bar, self.epochs, self.labels = bar, epochs, {**LABELS, **(labels or {})}
        self.tasks: dict[str, int] = {}

    def count(self, label: str, done: int, total: int | None, info: str = "") -> None:
        """Show `label` with done/total, replacing the other bars: one step at a time."""
        for other in [t for t in self.tasks if t != label]:
            self.bar.remove_task(self.tasks.pop(other))
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total, info=info)
        self.bar.update(self.tasks[label], completed=done, total=total, info=info)

    def note(self, text: str) -> None:
        """Print a line and end the bars: the step that follows has nothing to count."""
        for label in list(self.tasks):
            self.bar.remove_task(self.tasks.pop(label))
        self.line(text)

    def line(self, text: str) -> None:
        self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def epoch(self, epoch: int, done: int, steps: int, doing: str = "") -> None:
        # per epoch: early stopping may end training before the last one, so an ETA over all of them misleads
        self.count(f"Training epoch {epoch + 1}" + (f" (of at most {self.epochs})" if self.epochs else ""), done, steps, doing)

    def __call__(self, event) -> None:
        match event:
            case Status(text):
                self.line(text)
            case events.EpochStarted(epoch, steps):
                self.epoch(epoch, 0, steps)
            case events.Step(epoch, step, steps, loss):
                self.epoch(epoch, step, steps, f"loss {loss:.3f}")
            case events.Validating(epoch, steps):
                self.epoch(epoch, steps, steps, "validating")
            case events.EpochDone(epoch, loss, train_accuracy, v):
                self.line(f"epoch {epoch:>2}: loss {loss:.3f}  train acc {train_accuracy:.2f}  "
                          f"validation acc {v['weighted']:.2f} (positive {v['positive']:.2f}, negative {v['negative']:.2f})")
            case events.FittingHead():
                self.note("Fitting the concept head and its fusion with the tokens...")
            case events.SubjectStarted(subject, index, total, fold, folds):
                self.note(f"<{subject}> ({index + 1}/{total}, fold {fold + 1}/{folds})")
            case events.Scoring(method=method):
                self.note(f"  scoring with {method}")
            case Counted(done, total):
                self.count(self.labels[type(event)], done, total)
            case _:
                raise TypeError(f"not an event the CLI shows: {event!r}")


@contextmanager
def showing(epochs: int | None = None, labels: dict | None = None, waiting: str | None = None):
    """The command's long work shown on stderr while the block runs (see Display); `waiting`: a
    bar shown before the first event arrives."""
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err, transient=True,
                   disable=not err.is_terminal)  # piped: the step lines only, no blank line for the bar
    display = Display(bar, epochs, labels)
    if waiting:
        display.count(waiting, 0, None)
    with bar, reporting(display):
        yield display


def render_train(result, json_: bool) -> None:
    if json_:
        return print_json(result.to_json())
    if result.interrupted:
        status(f"Interrupted: kept the best checkpoint so far (epoch {result.best_epoch}); continue with `yollava train {result.concept} --resume`.")
        raise typer.Exit(130)
    best = result.history[result.best_epoch - 1]["validation"] if result.best_epoch else None
    out.print(
        f"Trained <{result.concept}>: best epoch {result.best_epoch}, validation accuracy "
        f"{best['weighted']:.2f}, threshold {result.threshold:.3f}"
        + (f" (head {result.thresholds['head']:.3f}, fused {result.thresholds['fused']:.3f})." if "fused" in result.thresholds else "."),
        markup=False, highlight=False,
    )


def train_showing_progress(registry: Registry, name: str, model: str | None, quantize: str | None = None):
    """use.session.train (what `add` and `ask` run for a concept that needs it), with its progress on stderr."""
    from yollava_cli.use import session

    with showing(TrainConfig.epochs):
        return session.train(registry, name, model, quantize)


def render_concept(info: dict) -> None:
    """Like `git show`: header, counts, the current checkpoint's figures, then the details."""
    line(f"<{info['name']}>  {info['kind']}, {info['status']}")
    line(f"base model: {info['base_model'] or '-'}")
    line(f"photos: {len(info['photos'])}")
    if info["missing_photos"]:
        sources = [m["source"] or m["stored"] for m in info["missing_photos"]]
        line(f"missing from the store: {len(sources)} of {len(info['photos'])} photos ({', '.join(sources)}); "
             f"re-add with `yollava add {info['name']} {' '.join(map(shlex.quote, sources))}`")
    line(f"negatives: {info['negatives']['hard']} hard, {info['negatives']['easy']} easy")
    line(f"attribute answers cached: {info['attribute_conversations']}")
    for item in info["facts"]:
        line(f"fact {item['number']}: {item['text']}")
    if info["checkpoint"]:
        line(f"checkpoint: {info['checkpoint']['file']} (k={info['checkpoint']['k']}, {info['checkpoint']['created_at']})")
    metrics = info["metrics"] or {}
    if metrics.get("validation"):
        v = metrics["validation"]
        line(f"best epoch: {metrics['best_epoch']} of {metrics.get('epochs_run', '?')} run")
        line(f"validation: weighted {v['weighted']:.2f}, positive {v['positive']:.2f}, negative {v['negative']:.2f}")
    if metrics.get("thresholds"):
        line("thresholds: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["thresholds"].items()))
    if info["negatives"]["hardest"]:
        line()
        line("hardest negatives:")
        for item in info["negatives"]["hardest"]:
            line(f"  {item['score']:.3f}  {item['photo']}")
    line()
    line("photos:")
    print_table(
        ["photo", "role", "size", "source"],
        [[p["sha256"][:12] + (" (missing)" if p["missing"] else ""), p["role"], "x".join(map(str, p["size"])), p["source"]]
         for p in info["photos"]],
    )
    data = info.get("training_data")
    if data:
        line()
        line(f"identifier started at: {data['subject_word']!r}")
        line(f"attribute conversations training learns ({len(data['attribute_conversations'])}):")
        for item in data["attribute_conversations"]:
            line(f"Q: {item['question']}")
            line(f"A: {item['answer']}")
