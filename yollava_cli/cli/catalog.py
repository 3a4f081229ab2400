"""`yollava models`: what yollava runs, and what this machine can hold."""

from yollava_cli.cli.app import app
from yollava_cli.cli.options import JsonFlag, QuantizeOption
from yollava_cli.cli.output import out, print_json, print_table, status
from yollava_cli.errors import UserError


@app.command("models")
def models(quantize: QuantizeOption = None, json_: JsonFlag = False):
    """List the models yollava runs, one row per example id: memory, whether it runs here, how verified.

    Examples:
      yollava models
      yollava models --quantize 4bit --json
    """
    from yollava_cli.models.compute import current_policy
    from yollava_cli.use.catalog import model_catalog

    try:
        policy, note = current_policy(quantize), None
    except UserError as e:  # a quantization this machine cannot run: list what it can, and say why
        policy, note = current_policy("none"), f"{e}; listed without quantization"
    catalog = model_catalog(policy, note)
    if json_:
        return print_json(catalog)
    compute = catalog["compute"]
    if note:
        status(f"note: {note}")
    out.print(f"On this machine: {compute['device']}, {compute['precision']} ({compute['reason']}); "
              f"{catalog['memory_gb']:g} GB, of which a model may take {catalog['headroom']:.0%}: {catalog['usable_gb']:g} GB.",
              markup=False, highlight=False)
    print_table(["family", "--model", "params", "memory", "runs here", "verified on"],
                [[m["name"], m["example"], f"{m['params_b']:g}B", f"~{m['memory_gb']:g} GB", m["verdict"], m["verified"]]
                 for m in catalog["models"]])
