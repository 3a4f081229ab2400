"""Options several commands share."""

from typing import Annotated, Optional

import typer

from yollava_cli.config import QUANTIZE
from yollava_cli.learning.train_config import RANGES

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]

ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="Base model: the offline default, a hub id, or a local folder. Default: $YOLLAVA_MODEL, else config.")
]

QuantizeOption = Annotated[
    Optional[str], typer.Option("--quantize", metavar="|".join(QUANTIZE[1:]),
                                help="Load a big base model's weights in 4 or 8 bits on a CUDA GPU (bitsandbytes). Default: $YOLLAVA_QUANTIZE, else config.")
]

EmbedderOption = Annotated[
    Optional[str],
    typer.Option("--embedder", help="auto, efficientnet-lite0, or open_clip:ARCH:PRETRAINED (a tag or a local file)."),
]


class Generation:
    """Shared generation flags."""

    # at most a whole LLaVA-1.5 context; what fits beside the prompt is the model's to say
    MaxTokens = Annotated[int, typer.Option("--max-tokens", min=1, max=4096, help="Longest answer, in tokens.")]
    Temperature = Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy (reproducible); higher = more varied.")]
    Seed = Annotated[int, typer.Option(min=RANGES["seed"][0], max=RANGES["seed"][1], help="Sampling seed (with --temperature > 0).")]


RayOption = Annotated[
    Optional[str],
    typer.Option("--ray", metavar="auto|ADDRESS",
                 help="Run the work on Ray: auto (the cluster $RAY_ADDRESS names, else a local instance on 127.0.0.1) "
                      "or a cluster's HOST:PORT; off runs here. Default: config's \"ray\", else off."),
]


def ray_address(given: str | None) -> str | None:
    """--ray, else the config's "ray"; None (and Ray never imported) when neither asks for it."""
    from yollava_cli.config import load_config

    address = given or load_config().get("ray")
    return None if address in (None, "", "off") else str(address)


def executor(ray: str | None, model: str | None = None, quantize: str | None = None, embedder: str | None = None,
             needs_model: bool = False):
    """Where the command's units run: on Ray workers for --ray (or the config's "ray"), else here.
    The one place the CLI decides; `with executor(...) as ex:` stops workers it started."""
    address = ray_address(ray)
    if address:
        from yollava_cli.scale.driver import RayExecutor

        return RayExecutor(address, model, quantize, embedder, needs_model)
    from yollava_cli.learning.executor import LocalExecutor

    return LocalExecutor(model, quantize, embedder)
