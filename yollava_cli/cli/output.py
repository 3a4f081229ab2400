"""What the commands print: rich on a terminal, tab-separated lines when piped, JSON on request,
progress and notes on stderr."""

import json
import sys
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.table import Table

from yollava_cli.config import data_dir
from yollava_cli.reporting import Status, reporting
from yollava_cli.store.fileio import path_text
from yollava_cli.store.registry import Registry



class TextConsole(Console):
    """A console that prints any text: a file name's bytes that are not UTF-8 (held by Python as
    lone surrogates, which an encoder refuses) are shown as \\xNN escapes (path_text)."""

    def print(self, *objects, **options) -> None:
        super().print(*(path_text(o) if isinstance(o, str) else o for o in objects), **options)


out = TextConsole(soft_wrap=True)  # piped output is never wrapped at 80 columns
err = TextConsole(stderr=True, soft_wrap=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# a path may hold a tab or a newline: escaped as C does, it cannot split a tab-separated line
FIELD_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
LINE_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r"})


def field(text: str) -> str:
    """One field of a tab-separated line: backslash, tab, newline and carriage return escaped, and
    bytes that are not UTF-8 (path_text)."""
    return path_text(text.translate(FIELD_ESCAPES))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (no header) when piped, for cut and awk,
    each field escaped (`field`)."""
    if not out.is_terminal:
        for row in rows:
            sys.stdout.write("\t".join(map(field, row)) + "\n")
        return
    table = Table(*headers)
    for row in rows:
        table.add_row(*map(path_text, row))
    out.print(table)


def line(text: str = "") -> None:
    """One line on stdout, never wrapped (a path stays whole, piped or not), a newline in it escaped."""
    out.print(text.translate(LINE_ESCAPES), markup=False, highlight=False, soft_wrap=True)


def status(message: str) -> None:
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def show_status(event) -> None:
    """The command's reporter outside its long work (render.showing): status lines on stderr."""
    if isinstance(event, Status):
        status(event.text)


COMMAND: ContextVar[dict | None] = ContextVar("command", default=None)  # what the running command opened


@contextmanager
def command_scope():
    """One command's lifetime: what it opens (its registry) is closed when it ends; what it reports
    is shown (show_status)."""
    with ExitStack() as stack, reporting(show_status):
        token = COMMAND.set({"stack": stack})
        try:
            yield COMMAND.get()
        finally:
            COMMAND.reset(token)


def open_registry() -> Registry:
    """The command's registry: opened on first use, the same one for the rest of the command, and
    closed when it ends (its backup refreshed then, once, if the command wrote)."""
    scope = COMMAND.get()
    if scope is None:  # called outside a command (a test calling a command's function)
        return Registry(data_dir())
    if "registry" not in scope:
        scope["registry"] = scope["stack"].enter_context(Registry(data_dir()))
    return scope["registry"]
