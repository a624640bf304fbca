"""Command-line interface of rvqcodec (a thin Typer layer over the library)."""

import signal
import sys


def run(*args: object, **kwargs: object) -> None:
    """The console script (and ``python -m cli``, ``python -m train``): the app, called with
    ``args`` and ``kwargs``. Loading it loads PyTorch (a second or more): Ctrl-C then ends as it
    does in a command, with one line and status 130, not a traceback."""
    try:
        from .main import app
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    app(*args, **kwargs)
