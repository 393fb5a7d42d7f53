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


def read_json(path):
    """The parsed JSON file at ``path`` (an existing file); an ``InputError`` naming the file, and the line
    for a syntax error, when it is not valid JSON or cannot be read. Callers check the structure."""
    import json
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON ({e.msg})", line=e.lineno) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot be read ({e})") from None


class ConfigError(InputError):
    """A bad ``--set`` key or value, or an invalid config combination."""


class DivergedError(Exception):
    """Training produced a non-finite loss or parameter; entry points print one line and exit with status 3.

    ``where`` is the run directory, ``quantity`` what went non-finite (a logged loss or a state leaf's path),
    ``last_good`` the step of the checkpoint that is kept (None: none was saved yet).
    """

    def __init__(self, where: str, step: int, quantity: str, last_good: int | None):
        self.where, self.step, self.quantity, self.last_good = str(where), step, quantity, last_good
        kept = (f"the last good checkpoint (step {last_good}) is kept" if last_good is not None
                else "no checkpoint had been saved yet")
        super().__init__(f"{self.where}: training diverged at step {step}: {quantity} is not finite; {kept}. "
                         "Lower the learning rates or clip gradients, then use a new --run-dir")


class LeakageError(AssertionError):
    """A held-out (validation or test) interaction was about to reach training."""
