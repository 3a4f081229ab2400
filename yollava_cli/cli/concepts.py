"""Commands that manage concepts: add, mine, train, note, list, show, rm, export, import."""

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from yollava_cli.cli.app import app
from yollava_cli.cli.options import (
    EmbedderOption,
    JsonFlag,
    ModelOption,
    QuantizeOption,
    RayOption,
    executor,
)
from yollava_cli.cli.output import (
    open_registry,
    out,
    print_json,
    print_table,
    status,
)
from yollava_cli.cli.render import render_concept, render_train, showing, train_showing_progress
from yollava_cli.errors import UserError
from yollava_cli.learning import events
from yollava_cli.learning.train_config import RANGES, TrainConfig
from yollava_cli.store import concepts

MAX_NEGATIVES = 10_000  # of each kind: the paper mines ~100; every one is a stored photo and a training example


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
    from yollava_cli.store.facts import add_concept_with_facts, check_fact, read_notes_file
    from yollava_cli.use.session import needs_training

    notes = [check_fact(n) for n in note or []] + (read_notes_file(notes_file) if notes_file else [])
    registry = open_registry()  # malformed facts were refused above; too many are refused with the photos
    result = add_concept_with_facts(registry, name, photos, notes, kind=kind and kind.value, replace=replace, strict=strict)
    data = {**result.to_json(), "facts_added": len(notes)}
    for path, reason in result.skipped:
        status(f"skipped {path}: {reason}")
    if not json_:
        out.print(added_line(result, len(notes)), markup=False, highlight=False)
    if not no_train and needs_training(registry, result.concept, result.new_photos):
        trained = train_showing_progress(registry, result.concept, model, quantize)
        data["trained"] = trained.to_json()
        if not json_:
            render_train(trained, False)
    if json_:
        print_json(data)


def added_line(result, facts_added: int) -> str:
    """What an add did; photos the concept already had are not news (nor does it retrain for them)."""
    if result.created or result.new_photos or result.restored_photos:
        restored = f"{result.restored_photos} restored to the store, " if result.restored_photos else ""
        return (f"{'Created' if result.created else 'Updated'} <{result.concept}> ({result.kind}): "
                f"{result.new_photos} new photo(s), {restored}{result.total_photos} in all.")
    noted = f"; noted {facts_added} fact(s)" if facts_added else "; nothing changed"
    return f"<{result.concept}> ({result.kind}) has these photos already ({result.total_photos} in all){noted}."


@app.command()
def mine(
    name: str,
    pool: Annotated[Optional[list[str]], typer.Option("--pool", help="Pool(s) to mine (default: the configured default pools, else all).")] = None,
    hard: Annotated[int, typer.Option(min=0, max=MAX_NEGATIVES, help="Hard negatives: the pool photos most like the concept.")] = 100,
    easy: Annotated[int, typer.Option(min=0, max=MAX_NEGATIVES, help="Easy negatives: random other pool photos.")] = 100,
    seed: Annotated[int, typer.Option(min=RANGES["seed"][0], max=RANGES["seed"][1], help="Seed for the easy draw.")] = 0,
    duplicate_above: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Skip pool photos this similar to the concept's own (likely the subject itself).")] = None,
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
    # an unknown concept or pool, or photos missing from the store, fail before the embedder loads
    concepts.require_photos(registry, concepts.get_concept(registry, name))
    for each in pool or []:
        pool_by_name(registry, each)
    model = load_embedder(embedder)
    embedding = f"Embedding photos ({model.id})"
    with showing(labels={events.EmbeddingToMine: embedding}, waiting=embedding):
        result = mining.mine(open_registry(), name, model, pool, hard, easy, seed, duplicate_above)
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
def train(
    names: Annotated[Optional[list[str]], typer.Argument(metavar="NAME", help="The concept(s) to train.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Train every concept.")] = False,
    k: Annotated[int, typer.Option("--k", min=RANGES["k"][0], max=RANGES["k"][1], help="Latent tokens per concept.")] = TrainConfig.k,
    epochs: Annotated[int, typer.Option(min=RANGES["epochs"][0], max=RANGES["epochs"][1], help="At most this many epochs (early stopping may end sooner).")] = TrainConfig.epochs,
    lr: Annotated[float, typer.Option(min=RANGES["lr"][0], max=RANGES["lr"][1], help="AdamW learning rate.")] = TrainConfig.lr,
    batch_size: Annotated[int, typer.Option(min=RANGES["batch_size"][0], max=RANGES["batch_size"][1])] = TrainConfig.batch_size,
    seed: Annotated[int, typer.Option(min=RANGES["seed"][0], max=RANGES["seed"][1])] = TrainConfig.seed,
    facts_in_tokens: Annotated[bool, typer.Option("--facts-in-tokens", help="Also train the concept's noted facts into its tokens (they are always in the prompt).")] = TrainConfig.facts_in_tokens,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (same flags).")] = False,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    ray: RayOption = None,
    json_: JsonFlag = False,
):
    """(Re)train concepts' tokens from their photos and mined negatives. Ctrl-C keeps the best so far.

    \b
    Examples:
      yollava train bo --epochs 15
      yollava train --all --ray auto     # one concept per Ray worker
    """
    config = TrainConfig(k=k, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, facts_in_tokens=facts_in_tokens)
    registry = open_registry()
    names = [c.name for c in registry.concepts()] if all_ else list(dict.fromkeys(names or []))
    if not names:
        raise UserError("name the concept(s) to train, or pass --all" + (" (there are no concepts yet)" if all_ else ""))
    from yollava_cli.learning.training import TrainResult
    from yollava_cli.use.train import train_concepts

    training = f"Training {len(names)} concept(s)"
    with executor(ray, model, quantize, needs_model=True) as ex, showing(epochs, {events.ConceptsTrained: training}, waiting=training):
        result = train_concepts(registry, names, ex, config, resume)
    trained = [TrainResult(**item) for item in result["concepts"]]
    if len(names) == 1 and not all_ and "ray" not in result:  # one concept trained here: its own document
        return render_train(trained[0], json_)
    if json_:
        return print_json(result)
    for item in trained:
        render_train(item, json_=False)


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
            return print_json({"concept": concepts.parse_name(name), "removed": {"number": removed.number, "text": removed.text}})
        return out.print(f"Removed fact {removed.number}: {removed.text}", markup=False, highlight=False)
    listed = facts.add_facts(registry, name, [fact]) if fact is not None else facts.list_facts(registry, name)
    if json_:
        return print_json({"concept": concepts.parse_name(name), "facts": [asdict(item) for item in listed]})
    if not listed:
        return status(f"No facts about <{concepts.parse_name(name)}> yet. Add one: yollava note {concepts.parse_name(name)} \"loves tennis balls\"")
    for item in listed:
        sys.stdout.write(f"{item.number}\t{item.text}\n")


@app.command("list")
def list_(json_: JsonFlag = False):
    """List your concepts.

    Example: yollava list --json
    """
    rows = open_registry().concept_summaries()
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
            raise UserError(f"not removing <{concept.name}> without confirmation; pass --yes")
        typer.confirm(f"Remove <{concept.name}> and its photos?", abort=True)
    result = concepts.remove_concept(registry, name)
    if json_:
        return print_json(result)
    out.print(f"Removed <{result['removed']}> ({result['photos_deleted']} photo file(s) deleted).", markup=False)


@app.command("export")
def export(
    name: str,
    file: Path,
    with_photos: Annotated[bool, typer.Option("--with-photos", help="Include the training photos.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists (only ever a regular file).")] = False,
    json_: JsonFlag = False,
):
    """Write a trained concept to one portable bundle file (zip of safetensors + JSON).

    Example: yollava export bo bo.yollava
    """
    from yollava_cli.use.bundle_format import export_concept

    result = export_concept(open_registry(), name, file, with_photos, force)
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
    from yollava_cli.use.bundle_format import new_concept_name, read_bundle

    registry = open_registry()
    new_concept_name(registry, as_ or read_bundle(file)[0]["name"])  # a damaged file or a taken name: refused before torch loads
    from yollava_cli.use.bundles import import_on_its_model

    result = import_on_its_model(registry, file, as_, model, quantize, not skip_model_check)
    if json_:
        return print_json(result)
    out.print(f"Imported <{result['concept']}> (trained on {result['base_model']}, k={result['k']}, {result['photos']} photos).", markup=False, highlight=False)
