"""A multi-turn conversation about your concepts and a photo: history, concepts named mid-chat
loaded as they come, and line editing with history for the terminal loop."""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.models.decoding import Sampling
from yollava_cli.models.vlm import VLM
from yollava_cli.store.facts import prompt_notes
from yollava_cli.store.registry import Registry
from yollava_cli.use.ask import ask, with_identifiers
from yollava_cli.use.find import recognize
from yollava_cli.use.session import load_checkpoint, mentioned_concepts, open_images


@dataclass
class ChatSession:
    """A multi-turn conversation: history, the current photo, the loaded concepts."""

    vlm: VLM
    concepts: list[str]
    options: Sampling
    images: list[Image.Image] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    registry: Registry | None = None  # where concepts mentioned mid-chat are loaded from

    def load_mentioned(self, text: str) -> list[str]:
        """Load each `<name>` in `text` that is not loaded yet (its current checkpoint); returns one
        line per concept that cannot be, saying why. Chat never trains: that takes minutes."""
        problems = []
        for name in mentioned_concepts(text, []):
            if name in self.concepts:
                continue
            try:
                load_checkpoint(self.registry, self.vlm, name, then=", then ask again")
            except UserError as e:
                problems.append(str(e))
                continue
            self.concepts.append(name)
            self.notes += prompt_notes(self.registry, [name])
        return problems

    def set_image(self, path: Path) -> None:
        self.images, self.keys = open_images([path])
        self.history = []  # earlier turns talked about another photo (or none)

    def reset(self) -> None:
        self.images, self.keys, self.history = [], [], []

    def say(self, text: str, on_text: Callable[[str], None], stop: threading.Event | None = None) -> str:
        verdicts = recognize(self.registry, self.vlm, self.concepts, self.images, self.keys) if self.registry else []
        result = ask(self.vlm, self.concepts, text, self.images, self.keys, self.options, on_text, self.history, stop,
                     self.notes, verdicts)
        self.history.append((with_identifiers(text, self.concepts), result["answer"]))
        return result["answer"]


@contextmanager
def input_history(path: Path) -> Iterator[None]:
    """Line editing for `input()`, with Up recalling earlier lines (of this and earlier chats, kept
    in `path`), where Python has readline."""
    try:
        import readline
    except ImportError:
        yield
        return
    try:
        readline.read_history_file(path)
    except OSError:  # no history yet, or unreadable: start without
        pass
    readline.set_history_length(1000)
    try:
        yield
    finally:
        try:
            readline.write_history_file(path)
        except OSError:
            pass
