"""Starting the server: the address bound first (a taken port fails before the model loads), the
model loaded once, the worker started, the start line logged, then uvicorn until Ctrl-C."""

import ipaddress
import socket

from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.reporting import Status, reporting
from yollava_cli.serve.logs import Log

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def check_exposure(host: str, token: str | None) -> None:
    """Only this machine may reach a server without a token: any other address needs one."""
    if not is_loopback(host) and not token:
        raise UserError(f"serving on {host} lets other machines use your model and concepts: give a token "
                        f"(--token T or $YOLLAVA_SERVE_TOKEN) that clients send as `Authorization: Bearer T`, "
                        f"or serve on 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def serve(settings, model: str | None, quantize: str | None, log: Log) -> None:
    check_exposure(settings.host, settings.token)
    sock = bind(settings.host, settings.port)
    import uvicorn

    from yollava_cli.models.loading import load_vlm
    from yollava_cli.serve.app import Registries, create_app, served_models
    from yollava_cli.serve.worker import Worker

    with reporting(lambda event: log.event("loading", event.text) if isinstance(event, Status) else None):
        vlm = load_vlm(model, quantize=quantize)
    worker = Worker(vlm, data_dir(), settings.queue)
    app = create_app(vlm, worker, settings, log)
    concepts = served_models(Registries(data_dir()).get(), vlm)[1:]
    log.event("listening", f"on {url(sock)}", url=url(sock), model=vlm.ref, concepts=concepts,
              auth="token" if settings.token else "none", local_images=settings.limits.local_images)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=3))
    try:
        server.run(sockets=[sock])
    finally:
        worker.close()
        log.event("stopped")
