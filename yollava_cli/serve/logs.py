"""The server's log: one line per event on stderr, as `key=value` text for people or, with --json,
one JSON object a line for scripts."""

import json
import sys
import threading
from datetime import datetime, timezone


class Log:
    def __init__(self, json_lines: bool = False, stream=None):
        self.json_lines, self.stream = json_lines, stream or sys.stderr
        self.lock = threading.Lock()  # lines from the event loop and the worker never interleave

    def event(self, event: str, message: str = "", **fields) -> None:
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if self.json_lines:
            line = json.dumps({"time": stamp, "event": event, **({"message": message} if message else {}), **fields})
        else:
            pairs = " ".join(f"{key}={text(value)}" for key, value in fields.items() if value is not None)
            line = " ".join(part for part in (stamp, event, message, pairs) if part)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def text(value) -> str:
    """A value as one token of a log line: quoted when it holds spaces or quotes."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value)) or "-"
    value = str(value)
    return json.dumps(value) if not value or any(c.isspace() or c in "\"=" for c in value) else value
