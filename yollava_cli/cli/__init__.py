"""The `yollava` command line: each command parses its arguments, calls one library function and
renders. app.py holds the app and its error handling; each module beside it registers its commands."""

from yollava_cli.cli import asking, catalog, concepts, maintenance, pools, serving  # noqa: F401  (registering the commands)
from yollava_cli.cli.app import app, main

__all__ = ["app", "main"]
