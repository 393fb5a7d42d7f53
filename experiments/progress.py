"""Progress bars for the long steps of a run (embedding pretraining, training chunks, evaluation):
steps/s, ETA and the last validation metric on stderr, so they never mix with the log lines on stdout.
Off under ``--quiet`` or when ``$CI`` is set (and whenever stderr is not a terminal nobody watches:
tqdm then still prints, so CI relies on the variable)."""
from __future__ import annotations

import os
import sys
from typing import Callable


class Bars:
    """Makes tqdm bars, or silent stand-ins when ``quiet``; every bar is closed by its ``with`` block."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet or bool(os.environ.get("CI"))

    def bar(self, total: int | None, desc: str, unit: str = "step", initial: int = 0):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=self.quiet,
                    leave=False, dynamic_ncols=True, smoothing=0.1)

    def counter(self, desc: str, unit: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
        """(``on_batch(done, total)``, ``close()``) for core functions that report batches done."""
        bar = self.bar(None, desc, unit)
        seen = [0]

        def on_batch(done: int, total: int):
            bar.total = total
            bar.update(done - seen[0])
            seen[0] = done

        return on_batch, bar.close


def log_line(line: str):
    """A log line on stdout that does not break a bar drawn on stderr."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
