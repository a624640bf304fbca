"""Where live streams come from and go to: stdin/stdout, TCP sockets, files.

An endpoint is ``-`` (stdin or stdout), ``tcp://HOST:PORT`` or a file path. Over TCP the
decoder listens and the encoder connects, so a demo is "start the decoder, then the encoder".
Every packet is sent on at once (TCP_NODELAY, a flush per write): latency over throughput.

Stopping: the first SIGINT/SIGTERM sets a :class:`StopFlag`; blocked reads poll it, so the
stream loops end between chunks and can still finalise their output. A second signal
interrupts at once.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import CodecError
from .files import atomic_output

POLL_SECONDS = 0.05  # how often blocked reads look at the stop flag
CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0  # a receiver that stops reading for this long is given up on
READ_BYTES = 4096


class StopFlag:
    """Set by a signal handler or another thread; the stream loops check it between chunks."""

    def __init__(self) -> None:
        self.signal = 0

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal != 0

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, POLL_SECONDS))


def ending_signals() -> tuple[int, ...]:
    """The signals that ask a run to end: SIGINT, SIGTERM and SIGHUP (a closed terminal), but
    not SIGHUP where it is ignored (``nohup``)."""
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hangup)


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag) -> Iterator[StopFlag]:
    """The first of :func:`ending_signals` sets ``stop`` (finish cleanly); a second one interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop:
            raise KeyboardInterrupt
        stop.set(signum)

    old = {s: signal.signal(s, handler) for s in ending_signals()}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class ByteReader:
    """Bytes from a file, pipe or socket as they arrive; a blocked read still sees ``stop``.

    :meth:`read` returns what is available (at most ``n``), and ``b""`` at end of input,
    once ``stop`` is set, or after ``timeout`` seconds without data (``timed_out``).
    """

    def __init__(self, source: BinaryIO | socket.socket, stop: StopFlag, timeout: float | None = None) -> None:
        self.source, self.stop, self.timeout, self.timed_out = source, stop, timeout, False
        try:
            self.fd: int | None = source.fileno()
        except (OSError, io.UnsupportedOperation):
            self.fd = None  # an in-memory stream: never blocks

    def read(self, n: int = READ_BYTES) -> bytes:
        waited = 0.0
        while self.fd is not None and not self.stop:
            if select.select([self.fd], [], [], POLL_SECONDS)[0]:
                break
            waited += POLL_SECONDS
            if self.timeout is not None and waited >= self.timeout:
                self.timed_out = True
                return b""
        if self.stop:
            return b""
        try:
            if isinstance(self.source, socket.socket):
                return self.source.recv(n)
            return os.read(self.fd, n) if self.fd is not None else getattr(self.source, "read1", self.source.read)(n)
        except (ConnectionResetError, ConnectionAbortedError):
            return b""  # the peer went away: same as a close

    def read_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n and (data := self.read(n - len(out))):
            out += data
        return out


def parse_address(spec: str) -> tuple[str, int] | None:
    """``tcp://HOST:PORT`` -> (host, port); None for a file path or ``-``."""
    if not spec.startswith("tcp://"):
        if "://" in spec:
            raise CodecError(f"unsupported address {spec!r}: use a file, - or tcp://HOST:PORT")
        return None
    host, sep, port = spec[len("tcp://"):].rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CodecError(f"bad address {spec!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5000")
    return host.strip("[]"), int(port)


def _connect(spec: str, address: tuple[str, int]) -> socket.socket:
    try:
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    except ConnectionRefusedError:
        raise CodecError(f"cannot connect to {spec}: connection refused (start the decoder first: "
                         f"rvqcodec stream decode --input {spec})") from None
    except socket.gaierror:
        raise CodecError(f"cannot connect to {spec}: unknown host {address[0]!r}") from None
    except OSError as exc:
        raise CodecError(f"cannot connect to {spec}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a packet must not wait for the next
    sock.settimeout(SEND_TIMEOUT)
    return sock


def _accept(spec: str, address: tuple[str, int], stop: StopFlag, timeout: float | None,
            on_listening: Callable[[str], None] | None) -> socket.socket:
    try:
        family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(address)
            server.listen(1)
            server.settimeout(POLL_SECONDS)
            spec = f"tcp://{address[0]}:{server.getsockname()[1]}"  # the port chosen for port 0
            if on_listening:
                on_listening(spec)
            start = time.monotonic()
            while not stop:
                if timeout is not None and time.monotonic() - start > timeout:
                    raise CodecError(f"no connection on {spec} within {timeout:g} s")
                with contextlib.suppress(socket.timeout):
                    conn, _ = server.accept()
                    conn.setblocking(True)
                    return conn
    except socket.gaierror:
        raise CodecError(f"cannot listen on {spec}: unknown host {address[0]!r}") from None
    except OSError as exc:
        raise CodecError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
    raise KeyboardInterrupt  # stopped before anyone connected: nothing to finalise


def stdout_writer() -> Callable[[bytes], None]:
    """A ``write(bytes)`` to stdout that flushes each time and turns a closed pipe into an error."""
    if sys.stdout.isatty():
        raise CodecError("refusing to write binary data to a terminal: pipe it, or use --output FILE")
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        try:
            out.write(data)
            out.flush()
        except (BrokenPipeError, ConnectionResetError):
            with contextlib.suppress(OSError, ValueError):  # keep Python from failing again at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise CodecError("the output was closed by the reader") from None
    return write


@contextlib.contextmanager
def open_byte_sink(spec: str, force: bool) -> Iterator[Callable[[bytes], None]]:
    """A ``write(bytes)`` that sends each packet on at once: to stdout, a TCP peer, or a file
    (written under a temporary name and renamed when the stream is complete)."""
    address = parse_address(spec)
    if address is not None:
        with _connect(spec, address) as sock:
            def send(data: bytes) -> None:
                try:
                    sock.sendall(data)
                except socket.timeout:
                    raise CodecError(f"the decoder at {spec} stopped reading") from None
                except OSError:
                    raise CodecError(f"the decoder at {spec} closed the connection") from None
            yield send
    elif spec == "-":
        yield stdout_writer()
    else:
        with atomic_output(Path(spec), force) as tmp, open(tmp, "wb") as f:
            yield f.write


@contextlib.contextmanager
def open_byte_source(spec: str, stop: StopFlag, timeout: float | None = None,
                     on_listening: Callable[[str], None] | None = None) -> Iterator[ByteReader]:
    """stdin, a file, or the first connection accepted on ``tcp://HOST:PORT``."""
    address = parse_address(spec)
    if address is not None:
        with _accept(spec, address, stop, timeout, on_listening) as conn:
            yield ByteReader(conn, stop, timeout)
    elif spec == "-":
        yield ByteReader(sys.stdin.buffer, stop, timeout)
    else:
        if not Path(spec).exists():
            raise CodecError(f"input file not found: {spec}")
        if Path(spec).is_dir():
            raise CodecError(f"input is a directory: {spec}")
        with open(spec, "rb", buffering=0) as f:
            yield ByteReader(f, stop, timeout)
