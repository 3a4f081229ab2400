"""Errors the user can fix: the CLI prints their message on one line and exits 1, no traceback."""


class UserError(Exception):
    """A problem with the user's input or environment, stated so they can act on it."""
