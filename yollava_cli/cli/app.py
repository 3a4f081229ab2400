"""The `yollava` command: each command parses its arguments, calls one library function, renders.

Exit codes: 0 ok, 1 user error (one line on stderr), 2 usage error, 130 interrupted.
"""

import errno
import json
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from yollava_cli.learning import events
from yollava_cli.store import concepts
from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.store.registry import Registry
from yollava_cli.learning.train_config import TrainConfig

out = Console(soft_wrap=True)  # piped output is never wrapped at 80 columns
err = Console(stderr=True, soft_wrap=True)
NO_SPACE_OR_ACCESS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT}


def disk_trouble(e: OSError | sqlite3.Error) -> bool:
    """Whether the error means no space or no write access: only then is the hint about a full
    disk or a read-only data dir true; on other errors it would send the user the wrong way."""
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY)
    return e.errno in NO_SPACE_OR_ACCESS


class YollavaGroup(TyperGroup):
    """Turns UserError into one line on stderr and exit 1, and Ctrl-C into exit 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except (OSError, sqlite3.Error) as e:  # disk full, read-only or vanished files: say so in one line
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            hint = " (is the disk full or the data dir read-only?)" if disk_trouble(e) else ""
            err.print(f"error: {getattr(e, 'strerror', None) or e}{where}{hint}",
                      markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False, highlight=False)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=YollavaGroup,
    help="Personalize a vision-language model to your own things: add photos of <bo>, then ask about <bo>.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (no header) when piped, for cut and awk."""
    if not out.is_terminal:
        for row in rows:
            sys.stdout.write("\t".join(row) + "\n")
        return
    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def open_registry() -> Registry:
    return Registry(data_dir())


def status(message: str) -> None:
    err.print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str):
    """A progress bar on stderr (silent when stderr is not a terminal); yields a (done, total) callback."""
    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=err, transient=True)
    task = bar.add_task(description, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)


ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="Base model: the offline default, a hub id, or a local folder. Default: $YOLLAVA_MODEL, else config.")
]


QuantizeOption = Annotated[
    Optional[str], typer.Option("--quantize", metavar="4bit|8bit",
                                help="Load a big base model's weights in 4 or 8 bits on a CUDA GPU (bitsandbytes). Default: $YOLLAVA_QUANTIZE, else config.")
]


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
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err, transient=True)
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


pool_app = typer.Typer(cls=YollavaGroup, help="Folders of everyday photos to mine negatives from.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(pool_app, name="pool")
EmbedderOption = Annotated[
    Optional[str],
    typer.Option("--embedder", help="auto, efficientnet-lite0, or open_clip:ARCH:PRETRAINED (a tag or a local file)."),
]


@pool_app.command("add")
def pool_add(name: str, folder: Path, embedder: EmbedderOption = None, json_: JsonFlag = False):
    """Register a folder as a negative pool and embed its photos (cached).

    Example: yollava pool add library ~/Pictures
    """
    from yollava_cli.learning import mining
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.store.pools import checked_new_pool

    checked_new_pool(name, folder)  # a bad name or folder fails before the embedder loads
    model = load_embedder(embedder)
    with progress_bar(f"Embedding {folder} ({model.id})") as on_progress:
        result = mining.add_pool(open_registry(), name, folder, model, on_progress, on_status=status)
    if json_:
        return print_json(result)
    out.print(
        f"Pool {result['pool']}: {result['photos']} photos ({result['embedded']} newly embedded, "
        f"{result['unreadable']} unreadable) with {result['embedder']}.", markup=False, highlight=False,
    )


@pool_app.command("list")
def pool_list(json_: JsonFlag = False):
    """List negative pools.

    Example: yollava pool list
    """
    rows = open_registry().pool_summaries()
    if json_:
        return print_json({"pools": rows})
    print_table(["name", "photos", "path"], [[r["name"], str(r["photos"]), r["path"]] for r in rows])


@pool_app.command("rm")
def pool_rm(name: str, json_: JsonFlag = False):
    """Forget a pool (its folder and cached embeddings are left alone).

    Example: yollava pool rm library
    """
    from yollava_cli.store.pools import remove_pool

    result = remove_pool(open_registry(), name)
    if json_:
        return print_json(result)
    out.print(f"Removed pool {name}.", markup=False)


@app.command()
def mine(
    name: str,
    pool: Annotated[Optional[list[str]], typer.Option("--pool", help="Pool(s) to mine (default: the configured default pools, else all).")] = None,
    hard: Annotated[int, typer.Option(min=0, help="Hard negatives: the pool photos most like the concept.")] = 100,
    easy: Annotated[int, typer.Option(min=0, help="Easy negatives: random other pool photos.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for the easy draw.")] = 0,
    duplicate_above: Annotated[Optional[float], typer.Option(help="Skip pool photos this similar to the concept's own (likely the subject itself).")] = None,
    embedder: EmbedderOption = None,
    json_: JsonFlag = False,
):
    """Choose a concept's negatives: hard (look-alikes) and easy (random) photos from your pools.

    Example: yollava mine bo --pool library --hard 100 --easy 100
    """
    from yollava_cli.learning import mining
    from yollava_cli.learning.embeddings import load_embedder

    from yollava_cli.store.pools import pool_by_name

    registry = open_registry()
    concepts.get_concept(registry, name)  # an unknown concept or pool fails before the embedder loads
    for each in pool or []:
        pool_by_name(registry, each)
    model = load_embedder(embedder)
    with progress_bar(f"Embedding photos ({model.id})") as on_progress:
        result = mining.mine(open_registry(), name, model, pool, hard, easy, seed, duplicate_above,
                             on_status=status, on_progress=on_progress)
    if json_:
        return print_json(result.to_json())
    kinds = [n["kind"] for n in result.negatives]
    out.print(
        f"<{result.concept}>: {kinds.count('hard')} hard and {kinds.count('easy')} easy negatives from "
        f"{result.candidates} candidates ({result.source}; {result.newly_embedded} newly embedded).",
        markup=False, highlight=False,
    )
    for item in result.excluded_near_duplicates:
        status(f"left out {item['photo']}: similarity {item['score']} (probably <{result.concept}> itself)")
    print_table(["kind", "score", "photo"], [[n["kind"], f"{n['score']:.3f}", n["photo"]] for n in result.negatives[:10]])


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Concept name, e.g. bo or <bo>.")],
    photos: Annotated[list[Path], typer.Argument(help="Photos and/or folders of photos.")],
    kind: Annotated[Optional[concepts.Kind], typer.Option(help="What it is (a new concept defaults to object).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Start the concept afresh, dropping what it had.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse the whole add if any file is unusable.")] = False,
    no_train: Annotated[bool, typer.Option("--no-train", help="Only store the photos; do not mine or train.")] = False,
    note: Annotated[Optional[list[str]], typer.Option("--note", help="A fact photos cannot show, e.g. \"is scared of the vacuum cleaner\" (repeatable).")] = None,
    notes_file: Annotated[Optional[Path], typer.Option("--notes-file", help="A text file of facts, one a line.")] = None,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """Add photos of a concept (creating it), then mine its negatives and train it.

    \b
    Examples:
      yollava add bo ~/Pictures/bo --kind pet
      yollava add bo ~/Pictures/bo --kind pet --note "is 4 years old" --note "loves tennis balls"
    """
    from yollava_cli.store.facts import add_facts, check_fact, read_notes_file

    notes = [check_fact(n) for n in note or []] + (read_notes_file(notes_file) if notes_file else [])
    registry = open_registry()  # bad facts were refused above, before anything is stored
    result = concepts.add_concept(registry, name, photos, kind=kind and kind.value, replace=replace, strict=strict)
    if notes:
        add_facts(registry, result.concept, notes)
    data = {**result.to_json(), "facts_added": len(notes)}
    for path, reason in result.skipped:
        status(f"skipped {path}: {reason}")
    verb = "Created" if result.created else "Updated"
    if not json_:
        out.print(f"{verb} <{result.concept}> ({result.kind}): {result.new_photos} new photo(s), "
                  f"{result.total_photos} in all.", markup=False, highlight=False)
    if not no_train and (result.new_photos or registry.concept(result.concept)["status"] != "trained"):
        trained = prepare(registry, result.concept, model, quantize=quantize)
        data["trained"] = trained.to_json()
        if not json_:
            render_train(trained, False)
    if json_:
        print_json(data)


def prepare(registry: Registry, name: str, model: str | None, config=None, resume: bool = False, quantize: str | None = None):
    """Mine (if the concept has no negatives yet) and train, with progress on stderr."""
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.learning.training import prepare_concept

    config = config or TrainConfig()
    with train_view(config.epochs) as view:
        return prepare_concept(
            registry, name, lambda: load_vlm(model, on_status=status, quantize=quantize), load_embedder,
            config, resume, on_status=status, on_progress=view.embedding, on_event=view,
        )


@app.command()
def train(
    name: str,
    k: Annotated[int, typer.Option("--k", min=1, max=64, help="Latent tokens per concept.")] = TrainConfig.k,
    epochs: Annotated[int, typer.Option(min=1, help="At most this many epochs (early stopping may end sooner).")] = TrainConfig.epochs,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = TrainConfig.lr,
    batch_size: Annotated[int, typer.Option(min=1)] = TrainConfig.batch_size,
    seed: Annotated[int, typer.Option()] = TrainConfig.seed,
    facts_in_tokens: Annotated[bool, typer.Option("--facts-in-tokens", help="Also train the concept's noted facts into its tokens (they are always in the prompt).")] = TrainConfig.facts_in_tokens,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (same flags).")] = False,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """(Re)train a concept's tokens from its photos and mined negatives. Ctrl-C keeps the best so far.

    Example: yollava train bo --epochs 15
    """
    config = TrainConfig(k=k, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, facts_in_tokens=facts_in_tokens)
    render_train(prepare(open_registry(), name, model, config, resume, quantize), json_)


class Generation:
    """Shared generation flags."""

    MaxTokens = Annotated[int, typer.Option("--max-tokens", min=1, help="Longest answer, in tokens.")]
    Temperature = Annotated[float, typer.Option(min=0.0, help="0 = greedy (reproducible); higher = more varied.")]
    Seed = Annotated[int, typer.Option(help="Sampling seed (with --temperature > 0).")]


def session(names: list[str], question: str, model: Optional[str], no_train: bool, quantize: Optional[str] = None):
    """Open the registry and model and load the concepts a question needs."""
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.use.chat import load_concepts, mentioned_concepts

    registry = open_registry()
    wanted = mentioned_concepts(question, names)
    for name in wanted:
        concepts.get_concept(registry, name)  # unknown names fail before the model loads
    vlm = load_vlm(model, on_status=status, quantize=quantize)
    train = None if no_train else (lambda name: prepare(registry, name, model, quantize=quantize))
    load_concepts(registry, vlm, wanted, train)
    return registry, vlm, wanted


@app.command()
def ask(
    name_or_question: Annotated[list[str], typer.Argument(metavar="[NAME] QUESTION", help="Optional concept name, then the question.")],
    image: Annotated[Optional[list[Path]], typer.Option("--image", help="A photo to ask about (repeatable).")] = None,
    max_tokens: Generation.MaxTokens = 256,
    temperature: Generation.Temperature = 0.0,
    seed: Generation.Seed = 0,
    no_train: Annotated[bool, typer.Option("--no-train", help="Refuse untrained concepts instead of training them first.")] = False,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """Ask about your concepts, streaming the answer. Every <name> in the question is loaded.

    \b
    Examples:
      yollava ask bo "what should I buy him for his birthday?"
      yollava ask "is <bo> in this photo?" --image park.jpg
    """
    from yollava_cli.use.chat import GenerationOptions, ask as answer, open_images, recognize
    from yollava_cli.store.facts import prompt_notes

    if len(name_or_question) > 2:
        raise UserError("quote the question: yollava ask [NAME] \"QUESTION\"")
    *names, question = name_or_question
    images, keys = open_images(image or [])  # bad photos fail before the model loads
    registry, vlm, wanted = session(names, question, model, no_train, quantize)
    stream = None if json_ else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    result = answer(vlm, wanted, question, images, keys, GenerationOptions(max_tokens, temperature, seed), stream,
                    notes=prompt_notes(registry, wanted), verdicts=recognize(registry, vlm, wanted, images, keys))
    if json_:
        return print_json(result)
    sys.stdout.write("\n")


@app.command()
def chat(
    names: Annotated[Optional[list[str]], typer.Argument(help="Concepts to load.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="A photo to talk about.")] = None,
    max_tokens: Generation.MaxTokens = 256,
    temperature: Generation.Temperature = 0.0,
    seed: Generation.Seed = 0,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
):
    """An interactive chat. /image PATH, /concepts, /reset, /quit; Ctrl-C stops an answer, Ctrl-D exits.

    Example: yollava chat bo mam --image park.jpg
    """
    from yollava_cli.use.chat import ChatSession, GenerationOptions, input_history
    from yollava_cli.store.facts import prompt_notes

    registry, vlm, wanted = session(names or [], "", model, no_train=False, quantize=quantize)
    chat_session = ChatSession(vlm, wanted, GenerationOptions(max_tokens, temperature, seed),
                               notes=prompt_notes(registry, wanted), registry=registry)
    if image:
        chat_session.set_image(image)
    status(f"Chatting about {', '.join(f'<{n}>' for n in wanted) or 'nothing personal'} on {vlm.ref}. /quit or Ctrl-D to leave.")
    with input_history(data_dir() / "history"):
        chat_loop(chat_session)


def chat_loop(chat_session) -> None:
    """Read lines until /quit or Ctrl-D: a /command, else a question answered as it streams."""
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            continue
        if not line:
            continue
        if line.startswith("/"):
            command, _, argument = line.partition(" ")
            if command == "/quit":
                return
            if command == "/reset":
                chat_session.reset()
                status("History and photo cleared.")
            elif command == "/concepts":
                status(", ".join(f"<{n}>" for n in chat_session.concepts) or "(none)")
            elif command == "/image" and argument:
                try:
                    chat_session.set_image(Path(argument.strip()).expanduser())
                    status(f"Now talking about {argument.strip()}.")
                except UserError as e:
                    status(f"error: {e}")
            else:
                status("commands: /image PATH, /concepts, /reset, /quit")
            continue
        problems = chat_session.load_mentioned(line)
        if problems:
            for problem in problems:
                status(f"error: {problem}")
            continue
        try:  # the prompt is inside: a Ctrl-C right after it still only stops this answer
            sys.stdout.write("yollava> ")
            sys.stdout.flush()
            chat_session.say(line, lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()


@app.command()
def note(
    name: str,
    fact: Annotated[Optional[str], typer.Argument(help="The fact to add; leave out to list the concept's facts.")] = None,
    rm: Annotated[Optional[int], typer.Option("--rm", min=1, help="Remove fact number N (as listed).")] = None,
    json_: JsonFlag = False,
):
    """Note what you know about a concept and photos cannot show; answers use it at once.

    \b
    Examples:
      yollava note bo "is scared of the vacuum cleaner"
      yollava note bo            # list, numbered
      yollava note bo --rm 2
    """
    from yollava_cli.store import facts

    registry = open_registry()
    if fact is not None and rm is not None:
        raise UserError("give a fact to add or --rm N, not both")
    if rm is not None:
        removed = facts.remove_fact(registry, name, rm)
        if json_:
            return print_json({"concept": concepts.parse_name(name), "removed": removed})
        return out.print(f"Removed fact {removed['number']}: {removed['text']}", markup=False, highlight=False)
    listed = facts.add_facts(registry, name, [fact]) if fact is not None else facts.list_facts(registry, name)
    if json_:
        return print_json({"concept": concepts.parse_name(name), "facts": listed})
    if not listed:
        return status(f"No facts about <{concepts.parse_name(name)}> yet. Add one: yollava note {concepts.parse_name(name)} \"loves tennis balls\"")
    for item in listed:
        sys.stdout.write(f"{item['number']}\t{item['text']}\n")


@app.command()
def find(
    name: str,
    photos: Annotated[list[Path], typer.Argument(help="Photos and/or folders (searched recursively).")],
    threshold: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Match cut (default: calibrated at training).")] = None,
    top: Annotated[Optional[int], typer.Option(min=1, help="Show only the best N.")] = None,
    by: Annotated[str, typer.Option("--by", help="Signal: fused (head + tokens), head (image embeddings only, fastest) or tokens (the language model on every photo).")] = "fused",
    verify: Annotated[int, typer.Option("--verify", help="With --by fused: how many of the head's best photos the language model checks (plus those near the threshold).")] = 32,
    no_train: Annotated[bool, typer.Option("--no-train", help="Refuse an untrained concept instead of training it.")] = False,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """Find a concept across photos: one line per photo with P(it is there), matches first.
    Exit 0 if any photo matches, 1 if none (like grep).

    \b
    Examples:
      yollava find bo ~/Pictures/2024 --top 20
      yollava find bo ~/Pictures --by head      # embeddings only: thousands of photos a second once cached
    """
    from yollava_cli.use.chat import SIGNALS

    if by not in SIGNALS:
        raise UserError(f"unknown signal --by {by!r}: use {', '.join(SIGNALS)}")
    if verify < 0:
        raise UserError(f"--verify {verify}: give how many photos the language model checks (0 or more)")
    from yollava_cli.use.chat import find as search
    from yollava_cli.store.photos import expand_photo_paths

    expand_photo_paths(photos)  # missing paths fail before the model loads
    # the head alone needs no language model: it scores cached image embeddings
    registry, vlm = (open_registry(), None) if by == "head" else session([name], "", model, no_train, quantize)[:2]
    with progress_bar(f"Looking for <{concepts.parse_name(name)}>") as on_progress:
        result = search(registry, vlm, name, photos, threshold, on_progress, by, verify)
    shown = result["results"][:top] if top else result["results"]
    matched = any(r["match"] for r in result["results"])
    for item in result["skipped"]:
        status(f"skipped {item['path']}: {item['reason']}")
    if json_:
        print_json({**result, "results": shown})
    else:
        for r in shown:
            sys.stdout.write(f"{r['probability']:.3f}\t{'match' if r['match'] else '-'}\t{r['signal']}\t{r['path']}\n")
    raise typer.Exit(0 if matched else 1)


@app.command()
def explain(
    name: str,
    max_tokens: Generation.MaxTokens = 40,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """Ask the model what each of a concept's latent tokens describes (a window into what it learned).

    Example: yollava explain bo
    """
    from yollava_cli.use.chat import GenerationOptions, explain as explain_tokens

    _, vlm, wanted = session([name], "", model, no_train=True, quantize=quantize)
    with progress_bar(f"Explaining <{wanted[0]}>'s latent tokens") as on_progress:
        rows = explain_tokens(vlm, wanted[0], GenerationOptions(max_tokens), on_progress)
    if json_:
        return print_json({"concept": wanted[0], "tokens": rows})
    print_table(["token", "explanation"], [[r["token"], r["explanation"]] for r in rows])


@app.command("eval")
def eval_(
    dataset: Annotated[Optional[Path], typer.Argument(help="A dataset folder laid out like shared/data/concepts.")] = None,
    methods: Annotated[str, typer.Option(help="Comma-separated: yollava, vanilla, description, auto-description, embedding, head, fused, ask, word-init.")] = "yollava,vanilla,description,auto-description,embedding,head,fused,ask,word-init",
    subjects: Annotated[Optional[str], typer.Option(help="Comma-separated subjects (default: all).")] = None,
    pool: Annotated[Optional[list[Path]], typer.Option("--pool", help="Folder(s) of negatives to mine (default: other subjects' train photos).")] = None,
    folds: Annotated[int, typer.Option(min=1, help="Leave-photos-out rotations per subject, for steadier figures.")] = 1,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per subject.")] = TrainConfig.epochs,
    facts_in_tokens: Annotated[bool, typer.Option("--facts-in-tokens", help="Train each subject's facts into its tokens (facts metric: tokens, both).")] = TrainConfig.facts_in_tokens,
    report: Annotated[Optional[Path], typer.Option(help="Write report.json, report.md and chart.png here.")] = None,
    history: Annotated[bool, typer.Option("--history", help="List earlier eval runs instead.")] = False,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """Measure personalization: recognition, multiple choice and captions, yollava vs prompting baselines.

    \b
    Examples:
      yollava eval ../shared/data/concepts --pool ../shared/data/pool/imagenet-sample --report out/
      yollava eval --history --json
    """
    from yollava_cli.evaluation import runner as evaluation

    registry = open_registry()
    if history:
        rows = evaluation.history(registry)
        if json_:
            return print_json({"runs": rows})
        return print_table(["id", "finished", "model", "dataset", "weighted recognition"],
                           [[str(r["id"]), r["finished_at"], r["model"], r["dataset"],
                             ", ".join(f"{m} {v:.3f}" for m, v in r["weighted"].items() if v is not None)] for r in rows])
    if dataset is None:
        raise UserError("name a dataset folder (or pass --history)")
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.learning.embeddings import load_embedder

    data = evaluation.load_dataset(dataset, subjects.split(",") if subjects else None)
    vlm = load_vlm(model, on_status=status, quantize=quantize)
    embedder = load_embedder()
    if embedder.note:
        status(embedder.note)
    with train_view(epochs) as view:
        result = evaluation.run_eval(data, vlm, embedder, data_dir() / "eval", methods.split(","), pool or [],
                                     TrainConfig(epochs=epochs, facts_in_tokens=facts_in_tokens), folds, view)
    result["run_id"] = evaluation.record_run(registry, result)
    if report:
        result["report_files"] = [str(p) for p in evaluation.write_report(result, report)]
    if json_:
        return print_json(result)
    out.print(evaluation.markdown(result), markup=False, highlight=False)


@app.command("export")
def export(
    name: str,
    file: Path,
    with_photos: Annotated[bool, typer.Option("--with-photos", help="Include the training photos.")] = False,
    json_: JsonFlag = False,
):
    """Write a trained concept to one portable bundle file (zip of safetensors + JSON).

    Example: yollava export bo bo.yollava
    """
    from yollava_cli.use.bundles import export_concept

    result = export_concept(open_registry(), name, file, with_photos)
    if json_:
        return print_json(result)
    out.print(f"Wrote <{result['concept']}> to {result['file']} ({result['bytes']} bytes, {result['photos']} photos).", markup=False, highlight=False)


@app.command("import")
def import_(
    file: Path,
    as_: Annotated[Optional[str], typer.Option("--as", help="Import under another name.")] = None,
    skip_model_check: Annotated[bool, typer.Option("--skip-model-check", help="Do not load the base model to compare fingerprints now (it is still checked at use).")] = False,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """Add a concept from a bundle, after verifying it (checksums, shapes, values, base model).

    Example: yollava import bo.yollava --as bo2
    """
    from yollava_cli.use.bundles import check_bundle, import_concept

    manifest = check_bundle(file)[0]
    fingerprint = None
    if not skip_model_check:
        from yollava_cli.models.loading import load_vlm

        fingerprint = load_vlm(model or manifest["base_model"], on_status=status, quantize=quantize).fingerprint
    result = import_concept(open_registry(), file, as_, fingerprint)
    if json_:
        return print_json(result)
    out.print(f"Imported <{result['concept']}> (trained on {result['base_model']}, k={result['k']}, {result['photos']} photos).", markup=False, highlight=False)


@app.command()
def doctor(
    fix: Annotated[bool, typer.Option("--fix", help="Repair what is safe to repair; what is removed goes to the trash.")] = False,
    restore: Annotated[bool, typer.Option("--restore", help="Replace a damaged registry.db with the registry's own backup.")] = False,
    empty_trash: Annotated[bool, typer.Option("--empty-trash", help="Delete everything earlier repairs moved to the trash.")] = False,
    json_: JsonFlag = False,
):
    """Check the registry against its files (missing, orphan, damaged; stale runs). Exit 1 if problems remain.

    Nothing is deleted: a repair moves what it removes to trash/ in the data dir, kept 30 days.

    Example: yollava doctor --fix
    """
    from yollava_cli.store import doctor as checks
    from yollava_cli.store.trash import empty_trash as delete_trash

    if restore:
        report = checks.restore(data_dir())
        status(f"restored the registry from {report['restored_from']}; the damaged one is in the trash")
    elif empty_trash:
        removed = delete_trash(data_dir(), None)
        if json_:
            return print_json({"trash_emptied": removed})
        return out.print(f"emptied the trash ({len(removed)} folder(s))", markup=False)
    else:
        report = checks.examine(open_registry(), fix)
    if json_:
        print_json(report)
    else:
        for item in report["problems"]:
            moved = f" (moved to {item['moved_to']})" if item.get("moved_to") else ""
            status(f"{'fixed: ' if item['fixed'] else ''}{item['kind']}: {item['detail']}{moved}")
        status(checks.compute_line(report["compute"]))
        out.print(checks.summary_line(report), markup=False, highlight=False)
    raise typer.Exit(0 if report["ok"] else 1)


@app.command("list")
def list_(json_: JsonFlag = False):
    """List your concepts.

    Example: yollava list --json
    """
    rows = concepts.list_concepts(open_registry())
    if json_:
        return print_json({"concepts": rows})
    if not rows:
        out.print("No concepts yet. Add one: yollava add bo ./photos-of-bo", markup=False)
        return
    print_table(
        ["name", "kind", "status", "photos", "base model", "updated"],
        [[r["name"], r["kind"], r["status"], str(r["photos"]), r["base_model"] or "-", r["updated_at"]] for r in rows],
    )


@app.command()
def show(
    name: str,
    data: Annotated[bool, typer.Option("--data", help="Also show the training data: counts and attribute conversations.")] = False,
    json_: JsonFlag = False,
):
    """Show one concept: photos, kind, status, negatives, checkpoint and metrics.

    Example: yollava show bo --data
    """
    registry = open_registry()
    info = concepts.describe_concept(registry, name)
    if data:
        from yollava_cli.learning.synthesis import inspect_training_data

        info["training_data"] = inspect_training_data(registry, concepts.get_concept(registry, name))
    if json_:
        return print_json(info)
    render_concept(info)


def line(text: str = "") -> None:
    """One line on stdout, never wrapped (a path stays whole, piped or not)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def render_concept(info: dict) -> None:
    """Like `git show`: header, counts, the current checkpoint's figures, then the details."""
    line(f"<{info['name']}>  {info['kind']}, {info['status']}")
    line(f"base model: {info['base_model'] or '-'}")
    line(f"photos: {len(info['photos'])}")
    line(f"negatives: {info['negatives']['hard']} hard, {info['negatives']['easy']} easy")
    line(f"attribute conversations: {info['attribute_conversations']}")
    for item in info["facts"]:
        line(f"fact {item['number']}: {item['text']}")
    if info["checkpoint"]:
        line(f"checkpoint: {info['checkpoint']['file']} (k={info['checkpoint']['k']}, {info['checkpoint']['created_at']})")
    metrics = info["metrics"] or {}
    if metrics.get("validation"):
        v = metrics["validation"]
        line(f"best epoch: {metrics['best_epoch']} of {metrics.get('epochs_run', '?')} run")
        line(f"validation: weighted {v['weighted']:.2f}, positive {v['positive']:.2f}, negative {v['negative']:.2f}")
    if metrics.get("thresholds", {}).get("fused") is not None:
        line("thresholds: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["thresholds"].items()))
    elif info["threshold"] is not None:
        line(f"threshold: {info['threshold']:.3f}")
    if info["negatives"]["hardest"]:
        line()
        line("hardest negatives:")
        for item in info["negatives"]["hardest"]:
            line(f"  {item['score']:.3f}  {item['photo']}")
    line()
    line("photos:")
    print_table(
        ["photo", "role", "size", "source"],
        [[p["sha256"][:12], p["role"], "x".join(map(str, p["size"])), p["source"]] for p in info["photos"]],
    )
    data = info.get("training_data")
    if data:
        line()
        line(f"identifier started at: {data['subject_word']!r}")
        line("attribute conversations:")
        for item in data["attribute_conversations"]:
            line(f"Q: {item['question']}")
            line(f"A: {item['answer']}")


@app.command()
def rm(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_: JsonFlag = False,
):
    """Remove a concept, its checkpoints, and photos no other concept uses.

    Example: yollava rm bo --yes
    """
    registry = open_registry()
    concept = concepts.get_concept(registry, name)
    if not yes:
        if not sys.stdin.isatty():
            raise UserError(f"not removing <{concept['name']}> without confirmation; pass --yes")
        typer.confirm(f"Remove <{concept['name']}> and its photos?", abort=True)
    result = concepts.remove_concept(registry, name)
    if json_:
        return print_json(result)
    out.print(f"Removed <{result['removed']}> ({result['photos_deleted']} photo file(s) deleted).", markup=False)


def main() -> None:
    app(prog_name="yollava")
