"""Commands that look after the data and measure the method: doctor, eval."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from yollava_cli.cli.app import app
from yollava_cli.cli.options import JsonFlag, ModelOption, QuantizeOption, RayOption, executor
from yollava_cli.cli.output import open_registry, out, print_json, print_table, status
from yollava_cli.cli.render import showing
from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.learning.train_config import RANGES, TrainConfig


@app.command("eval")
def eval_(
    dataset: Annotated[Optional[Path], typer.Argument(help="A dataset folder laid out like shared/data/concepts.")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated method names (default: every method; an unknown name lists them).")] = None,
    subjects: Annotated[Optional[str], typer.Option(help="Comma-separated subjects (default: all).")] = None,
    pool: Annotated[Optional[list[Path]], typer.Option("--pool", help="Folder(s) of negatives to mine (default: other subjects' train photos).")] = None,
    folds: Annotated[int, typer.Option(min=1, max=20, help="Leave-photos-out rotations per subject, for steadier figures.")] = 1,
    epochs: Annotated[int, typer.Option(min=RANGES["epochs"][0], max=RANGES["epochs"][1], help="Training epochs per subject.")] = TrainConfig.epochs,
    facts_in_tokens: Annotated[bool, typer.Option("--facts-in-tokens", help="Train each subject's facts into its tokens (facts metric: tokens, both).")] = TrainConfig.facts_in_tokens,
    report: Annotated[Optional[Path], typer.Option(help="Write report.json, report.md and chart.png here.")] = None,
    protocol: Annotated[Optional[str], typer.Option("--protocol", help="isolated (the default): each subject learns alone from mined negatives (the paper's); library: every subject beside the others, as a user's concepts.")] = None,
    history: Annotated[bool, typer.Option("--history", help="List earlier eval runs instead.")] = False,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    ray: RayOption = None,
    json_: JsonFlag = False,
):
    """Measure personalization: recognition, multiple choice and captions, yollava vs prompting baselines.

    \b
    Examples:
      yollava eval ../shared/data/concepts --pool ../shared/data/pool/imagenet-sample --report out/
      yollava eval --history --json
    """
    from yollava_cli.evaluation import report as reports
    from yollava_cli.evaluation import runs

    registry = open_registry()
    if history:
        rows = runs.history(registry)
        if json_:
            return print_json({"runs": [r.to_json() for r in rows]})
        return print_table(["id", "finished", "model", "dataset", "weighted recognition"],
                           [[str(r.id), r.finished_at, r.model, r.dataset,
                             ", ".join(f"{m} {v:.3f}" for m, v in r.weighted.items() if v is not None)] for r in rows])
    if dataset is None:
        raise UserError("name a dataset folder (or pass --history)")
    settings = runs.EvalSettings(dataset, methods.split(",") if methods else None, subjects.split(",") if subjects else None, pool or [],
                                 TrainConfig(epochs=epochs, facts_in_tokens=facts_in_tokens), folds,
                                 protocol or runs.PROTOCOLS[0], report)
    with executor(ray, model, quantize, needs_model=True) as ex, showing(epochs):
        result = runs.evaluate(registry, ex, settings)
    if json_:
        return print_json(result.to_json())
    out.print(reports.markdown(result), markup=False, highlight=False)


@app.command()
def doctor(
    fix: Annotated[bool, typer.Option("--fix", help="Repair what is safe to repair; what is removed goes to the trash.")] = False,
    restore: Annotated[bool, typer.Option("--restore", help="Replace a damaged registry.db with the registry's own backup.")] = False,
    empty_trash: Annotated[bool, typer.Option("--empty-trash", help="Delete everything earlier repairs moved to the trash.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Also read every stored photo whole and check its SHA-256 (slower; sizes are always checked).")] = False,
    json_: JsonFlag = False,
):
    """Check the registry against its files (missing, orphan, damaged; stale runs). Exit 1 if problems remain.

    Nothing is deleted: a repair moves what it removes to trash/ in the data dir, kept 30 days.

    Example: yollava doctor --fix
    """
    from yollava_cli.models import compute
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
        report = checks.examine(open_registry(), fix, deep)
    report["compute"] = compute.report()
    if json_:
        print_json(report)
    else:
        for item in report["problems"]:
            moved = f" (moved to {item['moved_to']})" if item.get("moved_to") else ""
            status(f"{'fixed: ' if item['fixed'] else ''}{item['kind']}: {item['detail']}{moved}")
        status(compute_line(report["compute"]))
        out.print(checks.summary_line(report), markup=False, highlight=False)
    raise typer.Exit(0 if report["ok"] else 1)


def compute_line(compute: dict) -> str:
    """doctor's line on the compute policy: the choice, why, and what the machine offers."""
    if "error" in compute:
        return f"compute: {compute['error']}"
    cap = compute["capability"]
    flags = " ".join(cap["cpu_flags"]) or "none of note"
    capped = f" (ONEDNN_MAX_CPU_ISA={cap['onednn_isa_cap']})" if cap.get("onednn_isa_cap") else ""
    gpu = f"; CUDA {cap['cuda_name']}" if cap["cuda"] else "; Apple GPU (MPS)" if cap["mps"] else "; no GPU"
    return (f"compute: {compute['device']} {compute['precision']} ({compute['reason']}); "
            f"CPU {cap['cpu_model']}, flags {flags}, oneDNN bf16 {'yes' if cap['onednn_bf16'] else 'no'}{capped}{gpu}")
