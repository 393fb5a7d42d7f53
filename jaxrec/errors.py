"""Error types shared by the core and the shell.

The core raises these; entry points (``data_prep/``, ``experiments/``) turn them into one line
``error: FILE[:LINE]: what is wrong, what was expected`` and exit status 2.
"""
from __future__ import annotations


class InputError(Exception):
    """Malformed user input: a file, a line in it, a column, a flag or a config value.

    ``where`` names the file (optionally ``file:line``) or the flag/config key the problem is in.
    """

    def __init__(self, where: str, message: str, line: int | None = None):
        self.where = str(where)
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        loc = self.where if self.line is None else f"{self.where}:{self.line}"
        return f"{loc}: {self.message}"


class ConfigError(InputError):
    """A bad ``--set`` key or value, or an invalid config combination."""


class LeakageError(AssertionError):
    """A held-out (validation or test) interaction was about to reach training."""
