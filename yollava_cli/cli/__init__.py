"""The `yollava` command line: parse, call one library function, render."""

from yollava_cli.cli.app import app, main

__all__ = ["app", "main"]
