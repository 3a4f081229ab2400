"""`yollava serve`: your concepts behind an OpenAI-compatible HTTP API (the library is serve/)."""

from typing import Annotated, Optional

import typer

from yollava_cli.cli.app import app
from yollava_cli.cli.options import JsonFlag, ModelOption, QuantizeOption
from yollava_cli.config import load_config


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(envvar="YOLLAVA_SERVE_HOST", help="Address to listen on (default 127.0.0.1; any other needs --token).")] = None,
    port: Annotated[Optional[int], typer.Option(envvar="YOLLAVA_SERVE_PORT", min=0, max=65535, help="Port (default 8765; 0 picks a free one).")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="YOLLAVA_SERVE_TOKEN", help="Clients must send `Authorization: Bearer TOKEN`.")] = None,
    allow_local_images: Annotated[bool, typer.Option("--allow-local-images", help="Let image_url parts name files on this machine (else data URLs only).")] = False,
    queue: Annotated[int, typer.Option(min=1, max=1024, help="Requests waiting beyond the one answered; more get 429 with Retry-After.")] = 16,
    max_request_mb: Annotated[int, typer.Option(min=1, max=1024, help="Largest request body, in MB.")] = 32,
    max_image_mb: Annotated[int, typer.Option(min=1, max=100, help="Largest image, in MB.")] = 20,
    model: ModelOption = None,
    quantize: QuantizeOption = None,
    json_: JsonFlag = False,
):
    """Serve the model and your concepts on an OpenAI-compatible API (/v1/models, /v1/chat/completions).
    Each concept is a model: `bo` answers about <bo>. Logs go to stderr (--json: one JSON object a line).

    \b
    Examples:
      yollava serve
      yollava serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    from yollava_cli.serve.app import Settings
    from yollava_cli.serve.chat_request import Limits
    from yollava_cli.serve.logs import Log
    from yollava_cli.serve.server import serve as run

    config = load_config()
    settings = Settings(host or config["serve_host"] or "127.0.0.1",
                        port if port is not None else config["serve_port"] if config["serve_port"] is not None else 8765,
                        token or config["serve_token"], max_request_mb * 2**20, queue,
                        Limits(max_image_mb * 2**20, allow_local_images))
    run(settings, model, quantize, Log(json_lines=json_))
