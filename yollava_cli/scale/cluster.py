"""Joining a Ray cluster, or starting a local instance, for `--ray`."""

import importlib.util
import os
import socket

from yollava_cli.errors import UserError

AUTO = "auto"
OFF = "off"
# "0" makes Ray treat this machine as a single-node setup: a local instance then binds 127.0.0.1
# only (Ray otherwise listens on every interface, even when asked for _node_ip_address=127.0.0.1).
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
REACH_TIMEOUT_S = 5


def connect(address: str) -> bool:
    """Join `address` (host:port or ray://host:port), or for `auto` the cluster RAY_ADDRESS names,
    else a new local instance on 127.0.0.1. Returns whether this call started Ray. A process
    already connected (a benchmark's cluster) keeps its connection."""
    if importlib.util.find_spec("ray") is None:
        raise UserError("--ray needs Ray, which is not installed: pip install 'yollava[ray]' (or bash scripts/install.sh --ray)")
    if address == AUTO:
        address = os.environ.get("RAY_ADDRESS") or ""
    if not address:
        os.environ[LOOPBACK_ONLY] = "0"  # read when ray is first imported, and by every process it starts
    import ray

    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    try:
        ray.init(address=address or None, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 configure_logging=True)
    except Exception as e:  # ray raises ConnectionError, RuntimeError, ValueError or its own errors here
        where = f"Ray at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot start or join {where} ({first_line(e)}); check the address, or use --ray auto") from None
    return not address


def check_reachable(address: str) -> None:
    """A one-line error in seconds for an address nobody listens on (Ray itself retries for a minute)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray {address}: give auto, or a cluster's HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"cannot reach Ray at {address} ({e.strerror or e}); check the address and that the "
                        f"cluster is up (`ray status` on its head node), or use --ray auto") from None


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def disconnect(started: bool) -> None:
    """Stop the local instance this command started; a joined cluster keeps running."""
    if started:
        import ray

        ray.shutdown()
