"""Turning user mistakes into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
import warnings
from typing import Iterator

import typer
from typer.core import TyperGroup

from codec.endpoints import ending_signals
from codec.errors import CodecError


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that ``finally`` blocks (a temporary output's
    removal) still run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (:func:`~codec.endpoints.ending_signals` but Ctrl-C, which raises
    already) raise :class:`Terminated` while inside, where they would kill the process; one
    left ignored (``nohup``) or handled stays so."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        for s in ending_signals():
            if s != signal.SIGINT and signal.getsignal(s) == signal.SIG_DFL:
                old[s] = signal.signal(s, _raise_terminated)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Exit 1 with ``error: ...`` for bad input; 130 on Ctrl-C, 128 + the signal on SIGTERM
    or SIGHUP (a temporary output is removed either way)."""
    try:
        with _terminate_as_interrupt():
            yield
    except CodecError as exc:
        fail(str(exc), 1)
    except (PermissionError, IsADirectoryError, FileNotFoundError) as exc:
        fail(f"{exc.strerror}: {exc.filename}", 1)
    except OSError as exc:
        fail(f"I/O error: {exc}", 1)
    except KeyboardInterrupt as exc:
        fail("interrupted", 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT))


def fail(message: str, code: int) -> None:
    """``error: `` and the first line of ``message`` on stderr; exit ``code``."""
    _say(message)
    raise typer.Exit(code)


def _say(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {first}", file=sys.stderr)


# Click's exceptions, from the copy of Click that Typer carries.
_CLICK = importlib.import_module(typer.BadParameter.__module__)


class OneLineErrors(TyperGroup):
    """Typer's command group, whose own checks of the command line (a value of the wrong type
    or out of range, an unknown option, a missing argument) print one line, ``error: ...``, and
    exit 1, as the commands' mistakes do (:func:`user_errors`), not Click's usage box and 2. A
    command alone still prints its help."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[no-untyped-def, override]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # (an Exit's code, else the command's value)
        except _CLICK.NoArgsIsHelpError as exc:  # (its message is the help; Typer's rich help has printed itself)
            if exc.format_message().strip():
                print(exc.format_message())
            sys.exit(exc.exit_code)
        except _CLICK.ClickException as exc:
            _say(exc.format_message())
            sys.exit(1)
        except typer.Abort:  # (end of input while Click prompts: none of the commands does)
            _say("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def one_line_warnings(*always: type[Warning]) -> Iterator[None]:
    """Warnings (a skipped corrupt file, clipped samples) as ``warning: ...`` lines on stderr,
    no source excerpt; those of the ``always`` categories every time they occur."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        for category in always:
            warnings.simplefilter("always", category)
        yield
