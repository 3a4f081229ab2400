"""The `yollava` command: each command parses its arguments, calls one library function, renders.

Exit codes: 0 ok, 1 user error (one line on stderr), 2 usage error, 130 interrupted.
"""

import sqlite3
from pathlib import Path

import typer
from typer.core import TyperGroup

from yollava_cli.cli.output import command_scope, err
from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.store.failures import explain


def error_line(e: OSError | sqlite3.Error, registry: Path | None = None) -> str:
    """One line for an OS or SQLite error: a full disk, a read-only file system, a permission, a
    failing disk or a held lock with its own fix (see failures.py); damage inside the registry
    with the way back; anything else as it is, naming its file (an SQLite error, the command's
    registry: `registry`, else the data dir's)."""
    path = Path(e.filename) if isinstance(e, OSError) and e.filename else None
    if isinstance(e, sqlite3.Error):
        path = registry or data_dir() / "registry.db"
    told = explain(e, path or data_dir())
    if told:
        return told
    what = getattr(e, "strerror", None) or str(e)
    if isinstance(e, sqlite3.Error) and path is not None and type(e) is sqlite3.DatabaseError:
        return f"{what}: {path}; `yollava doctor --restore` puts the registry's backup back"  # malformed: damaged
    return f"{what}: {path}" if path else what


class YollavaGroup(TyperGroup):
    """Turns UserError into one line on stderr and exit 1, and Ctrl-C into exit 130."""

    def invoke(self, ctx):
        with command_scope() as command:
            try:
                return super().invoke(ctx)
            except UserError as e:
                err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except (OSError, sqlite3.Error) as e:  # disk full, read-only or vanished files: say so in one line
                registry = command.get("registry")
                err.print(f"error: {error_line(e, registry.path if registry else None)}", markup=False, highlight=False,
                          soft_wrap=True)
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

pool_app = typer.Typer(cls=YollavaGroup, help="Folders of everyday photos to mine negatives from.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(pool_app, name="pool")


def main() -> None:
    app(prog_name="yollava")
