"""Rendering long work and concepts: training's and eval's progress bars and epoch lines, the
training summary, and `show`."""

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
from yollava_cli.store.registry import Registry


class TrainView:
    """Renders training and eval events: a counted bar for each step that takes a while (mining's
    embedding, the attribute conversations, each epoch), a line per epoch; the bars are cleared at the end."""

    def __init__(self, bar: Progress, epochs: int):
        self.bar, self.epochs = bar, epochs
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
        self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def embedding(self, done: int, total: int) -> None:
        self.count("Embedding photos to mine negatives", done, total)

    def epoch(self, epoch: int, done: int, steps: int, doing: str = "") -> None:
        # per epoch: early stopping may end training before the last one, so an ETA over all of them misleads
        self.count(f"Training epoch {epoch + 1} (of at most {self.epochs})", done, steps, doing)

    def __call__(self, event: events.EvalEvent) -> None:
        match event:
            case events.WritingConversations(done, total):
                self.count("Writing attribute conversations", done, total)
            case events.EpochStarted(epoch, steps):
                self.epoch(epoch, 0, steps)
            case events.Step(epoch, step, steps, loss):
                self.epoch(epoch, step, steps, f"loss {loss:.3f}")
            case events.Validating(epoch, steps):
                self.epoch(epoch, steps, steps, "validating")
            case events.EpochDone(epoch, loss, train_accuracy, v):
                self.bar.console.print(
                    f"epoch {epoch:>2}: loss {loss:.3f}  train acc {train_accuracy:.2f}  "
                    f"validation acc {v['weighted']:.2f} (positive {v['positive']:.2f}, negative {v['negative']:.2f})",
                    markup=False, highlight=False,
                )
            case events.FittingHead():
                self.note("Fitting the concept head and its fusion with the tokens...")
            case events.EmbeddingPool(done, total):
                self.count("Embedding the pool's photos", done, total)
            case events.EmbeddingToMine(done, total):
                self.embedding(done, total)
            case events.SubjectStarted(subject, index, total, fold, folds):
                self.note(f"<{subject}> ({index + 1}/{total}, fold {fold + 1}/{folds})")
            case events.Scoring(method=method):
                self.note(f"  scoring with {method}")
            case _:
                raise TypeError(f"not a training or eval event: {event!r}")


@contextmanager
def train_view(epochs: int):
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err, transient=True,
                   disable=not err.is_terminal)  # piped: the step lines only, no blank line for the bar
    with bar:
        yield TrainView(bar, epochs)


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


def train_showing_progress(registry: Registry, name: str, model: str | None, config: TrainConfig | None = None,
                           resume: bool = False, quantize: str | None = None):
    """use.session.train, with its progress on stderr."""
    from yollava_cli.use import session

    config = config or TrainConfig()
    with train_view(config.epochs) as view:
        return session.train(registry, name, model, quantize, config, resume,
                             on_status=status, on_progress=view.embedding, on_event=view)


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
