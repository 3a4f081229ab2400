"""The `yollava` command: each command parses its arguments, calls one library function, renders.

Exit codes: 0 ok, 1 user error (one line on stderr), 2 usage error, 130 interrupted.
"""

import errno
import sqlite3

import typer
from typer.core import TyperGroup

from yollava_cli.cli.output import err
from yollava_cli.errors import UserError

NO_SPACE_OR_ACCESS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT}


def disk_trouble(e: OSError | sqlite3.Error) -> bool:
    """Whether the error means no space or no write access: only then is the hint about a full
    disk or a read-only data dir true; on other errors it would send the user the wrong way."""
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY)
    return e.errno in NO_SPACE_OR_ACCESS


def sqlite_where(e: sqlite3.Error, hint: str) -> tuple[str, str]:
    """The registry an SQLite error is about (the error does not say), and what to do about a damaged one."""
    from yollava_cli.store.connection import opened_registry

    path = opened_registry()
    if path is None:
        return "", hint
    if not hint and type(e) is sqlite3.DatabaseError:  # "malformed", "not a database": the file is damaged
        hint = "; `yollava doctor --restore` puts the registry's backup back"
    return f": {path}", hint


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
            if isinstance(e, sqlite3.Error):
                where, hint = sqlite_where(e, hint)
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

pool_app = typer.Typer(cls=YollavaGroup, help="Folders of everyday photos to mine negatives from.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(pool_app, name="pool")


def main() -> None:
    app(prog_name="yollava")
