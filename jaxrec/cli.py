"""What every entry point (data_prep/, experiments/, benchmarks/) shares to answer bad input: one line
``error: WHERE: what is wrong`` on stderr and exit status 2 (3 for a diverged run), never a traceback
(``--debug``: the traceback). Standard library only, so the small benchmark parents that measure their
children's memory can use it without importing numpy."""
from __future__ import annotations

import argparse
import re
import sys

from jaxrec.errors import DivergedError, InputError


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors raise ``InputError``: a bad flag then gives the same single line
    ``error: --flag: ...`` and exit status 2 as bad data, instead of usage text plus an error line."""

    def error(self, message):
        m = re.match(r"argument ([^:]+): (.*)", message, re.S)
        if m:
            raise InputError(m.group(1), m.group(2))
        raise InputError(self.prog, message)


def cli_main(fn, argv=None, debug: bool | None = None) -> int:
    """Runs ``fn(argv)``; an ``InputError`` becomes ``error: ...`` on stderr and exit status 2, a
    ``DivergedError`` (non-finite loss or parameter during training) the same line and exit status 3."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if debug is None:
        debug = "--debug" in argv
    try:
        fn(argv)
        return 0
    except InputError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DivergedError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 3
