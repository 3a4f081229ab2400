"""`yollava models`: what yollava runs, and what this machine can hold."""

from yollava_cli.cli.app import app
from yollava_cli.cli.options import JsonFlag, QuantizeOption
from yollava_cli.cli.output import out, print_json, print_table


@app.command("models")
def models(quantize: QuantizeOption = None, json_: JsonFlag = False):
    """List the model families yollava runs, example ids, rough memory here, and whether this machine can run them.

    Examples:
      yollava models
      yollava models --quantize 4bit --json
    """
    from yollava_cli.models.compute import current_policy
    from yollava_cli.use.catalog import model_catalog

    catalog = model_catalog(current_policy(quantize))
    if json_:
        return print_json(catalog)
    compute = catalog["compute"]
    out.print(f"On this machine: {compute['device']}, {compute['precision']} ({compute['reason']}), "
              f"{catalog['memory_gb']:g} GB.", markup=False, highlight=False)
    print_table(["model", "examples (--model)", "params", "memory", "runs here"],  # the smallest example's
                [[m["name"], ", ".join(m["examples"]), f"{m['params_b']:g}B", f"~{m['memory_gb']:g} GB", m["verdict"]]
                 for m in catalog["models"]])
