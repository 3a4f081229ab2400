"""Options several commands share."""

from typing import Annotated, Optional

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]

ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="Base model: the offline default, a hub id, or a local folder. Default: $YOLLAVA_MODEL, else config.")
]

QuantizeOption = Annotated[
    Optional[str], typer.Option("--quantize", metavar="4bit|8bit",
                                help="Load a big base model's weights in 4 or 8 bits on a CUDA GPU (bitsandbytes). Default: $YOLLAVA_QUANTIZE, else config.")
]

EmbedderOption = Annotated[
    Optional[str],
    typer.Option("--embedder", help="auto, efficientnet-lite0, or open_clip:ARCH:PRETRAINED (a tag or a local file)."),
]


class Generation:
    """Shared generation flags."""

    MaxTokens = Annotated[int, typer.Option("--max-tokens", min=1, help="Longest answer, in tokens.")]
    Temperature = Annotated[float, typer.Option(min=0.0, help="0 = greedy (reproducible); higher = more varied.")]
    Seed = Annotated[int, typer.Option(help="Sampling seed (with --temperature > 0).")]
