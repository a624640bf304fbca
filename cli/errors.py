"""Turning user mistakes into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer

from codec.errors import CodecError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Exit 1 with ``error: ...`` for bad input, 130 on Ctrl-C."""
    try:
        yield
    except CodecError as exc:
        _fail(str(exc), 1)
    except (PermissionError, IsADirectoryError, FileNotFoundError) as exc:
        _fail(f"{exc.strerror}: {exc.filename}", 1)
    except OSError as exc:
        _fail(f"I/O error: {exc}", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {first}", file=sys.stderr)
    raise typer.Exit(code)
