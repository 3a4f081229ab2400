"""Commands that ask the model: ask, chat (and its terminal loop), find, explain."""

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from yollava_cli.cli.app import app
from yollava_cli.cli.options import Generation, JsonFlag, ModelOption, QuantizeOption, RayOption, executor
from yollava_cli.cli.output import (
    err,
    field,
    open_registry,
    print_json,
    print_table,
    status,
)
from yollava_cli.cli.render import showing, train_showing_progress
from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.learning import events
from yollava_cli.reporting import Status, reporting
from yollava_cli.store import concepts


def require_concepts(names: list[str], question: str = "", trained: bool = False) -> None:
    """Refuse unknown concepts (and untrained ones, with `trained`: --no-train) before torch is
    imported: a refusal that needs no model costs what `list` costs."""
    registry = open_registry()
    for name in concepts.mentioned_concepts(question, names):
        (concepts.require_trained if trained else concepts.get_concept)(registry, name)


def open_session(names: list[str], question: str, model: Optional[str], no_train: bool, quantize: Optional[str] = None):
    """The registry, the model and the concepts a question needs (trained first unless no_train)."""
    from yollava_cli.use.session import open_session as load

    registry = open_registry()
    train = None if no_train else (lambda name: train_showing_progress(registry, name, model, quantize))
    vlm, wanted = load(registry, names, question, model, quantize, train)
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
    if len(name_or_question) > 2:
        raise UserError("quote the question: yollava ask [NAME] \"QUESTION\"")
    *names, question = name_or_question
    require_concepts(names, question, trained=no_train)
    from yollava_cli.models.decoding import Sampling
    from yollava_cli.store.facts import prompt_notes
    from yollava_cli.use.ask import ask as answer
    from yollava_cli.use.find import recognize
    from yollava_cli.use.session import open_images

    images, keys = open_images(image or [])  # bad photos fail before the model loads
    registry, vlm, wanted = open_session(names, question, model, no_train, quantize)
    stream = None if json_ else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    result = answer(vlm, wanted, question, images, keys, Sampling(max_tokens, temperature, seed), stream,
                    notes=prompt_notes(registry, wanted), verdicts=recognize(registry, vlm, wanted, images, keys))
    if json_:
        return print_json(result)
    sys.stdout.write("\n")


def no_json_in_chat(value: bool) -> None:
    """chat streams each answer as it is generated, turn by turn, so it has no single document to
    print: `chat --json` is a usage error (exit 2) that points at the verb that has one."""
    if value:
        err.print("error: chat is interactive and has no --json; for one answer as JSON use "
                  "`yollava ask NAME \"QUESTION\" --json`", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)


@app.command()
def chat(
    names: Annotated[Optional[list[str]], typer.Argument(help="Concepts to load.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="A photo to talk about.")] = None,
    max_tokens: Generation.MaxTokens = 256,
    temperature: Generation.Temperature = 0.0,
    seed: Generation.Seed = 0,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    _json: Annotated[bool, typer.Option("--json", hidden=True, is_eager=True, callback=no_json_in_chat)] = False,
):
    """An interactive chat. /image PATH, /concepts, /reset, /quit; Ctrl-C stops an answer, Ctrl-D exits.

    Example: yollava chat bo mam --image park.jpg
    """
    from yollava_cli.models.decoding import Sampling
    from yollava_cli.store.facts import prompt_notes
    from yollava_cli.use.chat import ChatSession, input_history

    registry, vlm, wanted = open_session(names or [], "", model, no_train=False, quantize=quantize)
    chat_session = ChatSession(vlm, wanted, Sampling(max_tokens, temperature, seed),
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
        answer = AnswerLine()
        try:
            with reporting(answer.notice):
                chat_session.say(line, answer.write)
        except KeyboardInterrupt:
            answer.open()
            sys.stdout.write(" [stopped]")
        except UserError as e:  # a question too long for the model: this turn is refused, the chat goes on
            answer.close()
            status(f"error: {e}")
            continue
        answer.open()
        answer.close()


class AnswerLine:
    """One answer on the terminal: its "yollava> " goes out with its first text, so a notice about
    it (what its prompt left out) or its refusal reads on a line of its own, after no empty prompt."""

    def __init__(self) -> None:
        self.opened = False

    def open(self) -> None:
        if not self.opened:
            sys.stdout.write("yollava> ")
            sys.stdout.flush()
            self.opened = True

    def write(self, text: str) -> None:
        self.open()
        sys.stdout.write(text)
        sys.stdout.flush()

    def close(self) -> None:
        """End the answer's line, if one was begun; the next text begins another."""
        if self.opened:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.opened = False

    def notice(self, event) -> None:
        if isinstance(event, Status):
            self.close()
            status(event.text)


@app.command()
def find(
    name: str,
    photos: Annotated[list[Path], typer.Argument(help="Photos and/or folders (searched recursively).")],
    threshold: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Match cut (default: calibrated at training).")] = None,
    top: Annotated[Optional[int], typer.Option(min=1, help="Show only the best N.")] = None,
    by: Annotated[str, typer.Option("--by", help="Signal: fused (the head + every recognition signal), head (image embeddings only, fastest), or one signal alone: tokens (the language model on every photo).")] = "fused",
    verify: Annotated[int, typer.Option("--verify", help="With --by fused: how many of the head's best photos the language model checks (plus those near the threshold).")] = 32,
    no_train: Annotated[bool, typer.Option("--no-train", help="Refuse an untrained concept instead of training it.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Say why each photo scored as it did: each signal's score, the nearest concept photo and the nearest known non-concept photo.")] = False,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    ray: RayOption = None,
    json_: JsonFlag = False,
):
    """Find a concept across photos: one line per photo with P(it is there) and a verdict, matches
    first: `match` (clears the calibrated cut by a wide margin), `likely` (passes it narrowly: look
    before acting on it) or `-`. Exit 0 if any photo matches, 1 if none (like grep).

    \b
    Examples:
      yollava find bo ~/Pictures/2024 --top 20
      yollava find bo ~/Pictures --by head      # embeddings only: thousands of photos a second once cached
      yollava find bo --explain IMG_0042.jpg    # why it matched
    """
    from yollava_cli.store.photos import expand_photo_paths

    require_concepts([name], trained=no_train and by != "head")
    expand_photo_paths(photos)  # missing paths fail before torch is imported
    from yollava_cli.use.find import check_find_options
    from yollava_cli.use.find import find as search

    check_find_options(by, verify)
    # the head alone needs no language model: it scores cached image embeddings
    registry, vlm = (open_registry(), None) if by == "head" else open_session([name], "", model, no_train, quantize)[:2]
    with executor(ray) as ex:
        looking = f"Looking for <{concepts.parse_name(name)}>"
        with showing(labels={events.EmbeddingPhotos: looking, events.ScoringPhotos: looking}, waiting=looking):
            result = search(registry, vlm, name, photos, threshold, by, verify, embedders=ex.embedder, explain=explain)
        if ex.report() is not None:  # --by tokens embeds nothing: no worker was started
            result["ray"] = ex.report()
    shown = result["results"][:top] if top else result["results"]
    matched = any(r["match"] for r in result["results"])
    for item in result["skipped"]:
        status(f"skipped {item['path']}: {item['reason']}")
    if json_:
        print_json({**result, "results": shown})
    else:
        for r in shown:
            sys.stdout.write(f"{r['probability']:.3f}\t{r['verdict'].replace('no', '-')}\t{r['signal']}\t{field(r['path'])}\n")
            if explain:
                sys.stdout.write(explanation(r["why"]))
    raise typer.Exit(0 if matched else 1)


def explanation(why: dict) -> str:
    """`find --explain`'s lines under a photo: each signal's score against its cut, and the nearest photos."""
    scores = ", ".join(f"{signal} {score:.3f}" for signal, score in why.items() if signal != "cut" and isinstance(score, float))
    lines = [f"  scores: {scores} (cut {why['cut']:.3f})"]
    for key, label in (("nearest_concept_photo", "nearest concept photo"), ("nearest_negative", "nearest known other")):
        if why.get(key):
            lines.append(f"  {label}: {field(why[key]['photo'])} (similarity {why[key]['similarity']:.3f})")
    return "".join(line + "\n" for line in lines)


@app.command()
def explain(
    name: str,
    max_tokens: Generation.MaxTokens = 8,  # a few words each: 16 of them, in seconds
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """What each of a concept's latent tokens stands for: the vocabulary words nearest its row, how
    far training moved it from its start and toward which words, and the model's own few words where
    they differ between tokens.

    Example: yollava explain bo
    """
    from yollava_cli.models.decoding import Sampling
    from yollava_cli.use.explain import explain as explain_tokens
    from yollava_cli.use.explain import training_seed

    registry, vlm, wanted = open_session([name], "", model, no_train=True, quantize=quantize)
    explaining = f"Explaining <{wanted[0]}>'s latent tokens"
    with showing(labels={events.ExplainingTokens: explaining}, waiting=explaining):
        result = explain_tokens(vlm, wanted[0], Sampling(max_tokens), training_seed(registry, wanted[0]))
    if json_:
        return print_json(result)
    shared = result["shared_nearest_words"]
    differ = [", ".join(r["nearest_words"]) if r["nearest_words"] != shared else "-" for r in result["tokens"]]
    every = all(word == "-" for word in differ)  # every token reads the same words: said once, below
    said = any(r["description"] for r in result["tokens"])  # the model's words, only where they tell tokens apart
    print_table(["token", *([] if every else ["nearest words"]), "moved", "moved toward", *(["the model says"] if said else [])],
                [[r["token"], *([] if every else [near]), f"{r['moved']:.1%}", ", ".join(r["moved_toward"]),
                  *([r["description"] or "-"] if said else [])] for r, near in zip(result["tokens"], differ)])
    if shared:
        sys.stdout.write(f"nearest words of {'every token' if every else 'the other tokens'}: {', '.join(shared)}\n")
    sys.stdout.write(f"all tokens together moved toward: {', '.join(result['moved_together_toward'])}\n")
    if result["shared_description"] and said:  # the same sentence for all 16 says nothing of any one
        sys.stdout.write(f"the model says of the other tokens: {result['shared_description']}\n")
