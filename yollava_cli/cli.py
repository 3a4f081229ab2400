"""The `yollava` command: each command parses its arguments, calls one library function, renders.

Exit codes: 0 ok, 1 user error (one line on stderr), 2 usage error, 130 interrupted.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from yollava_cli import concepts
from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.store import Registry

out = Console()
err = Console(stderr=True)


class YollavaGroup(TyperGroup):
    """Turns UserError into one line on stderr and exit 1, and Ctrl-C into exit 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
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


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Concept name, e.g. bo or <bo>.")],
    photos: Annotated[list[Path], typer.Argument(help="Photos and/or folders of photos.")],
    kind: Annotated[Optional[concepts.Kind], typer.Option(help="What it is (a new concept defaults to object).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Start the concept afresh, dropping what it had.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse the whole add if any file is unusable.")] = False,
    no_train: Annotated[bool, typer.Option("--no-train", help="Only store the photos; do not mine or train.")] = False,
    json_: JsonFlag = False,
):
    """Add photos of a concept (creating it).

    Example: yollava add bo ~/Pictures/bo --kind pet
    """
    result = concepts.add_concept(open_registry(), name, photos, kind=kind and kind.value, replace=replace, strict=strict)
    data = {
        "concept": result.concept,
        "kind": result.kind,
        "created": result.created,
        "new_photos": result.new_photos,
        "total_photos": result.total_photos,
        "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
    }
    if json_:
        return print_json(data)
    for path, reason in result.skipped:
        err.print(f"skipped {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
    verb = "Created" if result.created else "Updated"
    out.print(
        f"{verb} <{result.concept}> ({result.kind}): {result.new_photos} new photo(s), "
        f"{result.total_photos} in all.",
        markup=False,
        highlight=False,
    )


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
def show(name: str, json_: JsonFlag = False):
    """Show one concept: photos, kind, status, negatives, checkpoint and metrics.

    Example: yollava show bo
    """
    info = concepts.describe_concept(open_registry(), name)
    if json_:
        return print_json(info)
    out.print(f"<{info['name']}>  {info['kind']}, {info['status']}", markup=False, highlight=False)
    out.print(f"base model: {info['base_model'] or '-'}", markup=False, highlight=False)
    out.print(
        f"negatives: {info['negatives']['hard']} hard, {info['negatives']['easy']} easy", markup=False
    )
    if info["checkpoint"]:
        out.print(f"checkpoint: {info['checkpoint']['file']}", markup=False, highlight=False)
    if info["metrics"]:
        out.print(f"metrics: {json.dumps(info['metrics'])}", markup=False, highlight=False)
    print_table(
        ["photo", "role", "size", "source"],
        [[p["sha256"][:12], p["role"], "x".join(map(str, p["size"])), p["source"]] for p in info["photos"]],
    )


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
