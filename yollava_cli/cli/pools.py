"""`yollava pool add|list|rm`: folders of everyday photos to mine negatives from."""

from pathlib import Path

from yollava_cli.cli.app import pool_app
from yollava_cli.cli.options import EmbedderOption, JsonFlag, RayOption, executor
from yollava_cli.cli.output import (
    open_registry,
    out,
    print_json,
    print_table,
    status,
)
from yollava_cli.cli.render import showing
from yollava_cli.learning import events


@pool_app.command("add")
def pool_add(name: str, folder: Path, embedder: EmbedderOption = None, ray: RayOption = None, json_: JsonFlag = False):
    """Register a folder as a negative pool and embed its photos (cached).

    Example: yollava pool add library ~/Pictures
    """
    from yollava_cli.learning import mining
    from yollava_cli.store.pools import checked_new_pool

    checked_new_pool(name, folder)  # a bad name or folder fails before the embedder loads
    with executor(embedder=embedder, ray=ray) as ex:
        model = ex.embedder()
        workers = f", {ex.report()['workers']} Ray workers" if ex.report() else ""
        scanning, embedding = f"Scanning {folder}", f"Embedding {folder} ({model.id}{workers})"
        with showing(labels={events.ScanningPool: scanning, events.EmbeddingPool: embedding}, waiting=scanning):
            result = mining.add_pool(open_registry(), name, folder, model)
        if ex.report() is not None:
            result["ray"] = ex.report()
    for item in result["skipped"]:
        status(f"skipped {Path(result['path']) / item['path']}: {item['reason']}")
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
