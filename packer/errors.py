"""The host side's one error type: a failure the user can act on."""
from __future__ import annotations


class CommandError(Exception):
    """Printed by the CLI as one message and a hint, exit status 1."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint
