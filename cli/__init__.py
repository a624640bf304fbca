"""Command-line interface of rvqcodec (a thin Typer layer over the library)."""

import signal
import sys


def run() -> None:
    """The console script. Loading the app loads PyTorch (a second or more): Ctrl-C then ends
    as it does in a command, with one line and status 130, not a traceback."""
    try:
        from .main import app
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    app()
