"""``rvqcodec stream encode|decode``: live streaming through pipes and TCP.

Parses options, calls :mod:`codec.live` and reports on stderr (stdout may carry the stream).
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from codec.bitstream import MAX_RATE
from codec.endpoints import StopFlag, stop_on_signals
from codec.errors import ClippingWarning, CodecError
from codec.live import decode_live, encode_live
from codec.pcm import PcmFormat

from .errors import one_line_warnings, user_errors
from .options import ForceOpt, KbpsOpt, ModelOpt, QuietOpt, StreamThreadsOpt, set_threads

stream_app = typer.Typer(
    no_args_is_help=True,
    help="Live streaming: codes as the audio arrives, audio as the packets arrive.\n\n"
    "Over TCP the decoder listens and the encoder connects:\n\n"
    "  rvqcodec stream decode --input tcp://127.0.0.1:5000 --output - | aplay -f S16_LE -r 24000\n\n"
    "  rvqcodec stream encode --input speech.wav --output tcp://127.0.0.1:5000 --realtime",
)

EncodeInput = Annotated[str, typer.Option(
    "--input", "-i", help="Audio file (any format), or - for WAV or --raw PCM on stdin.")]
EncodeOutput = Annotated[str, typer.Option(
    "--output", "-o", help=".rvq file, - for stdout, or tcp://HOST:PORT to connect to a listening `stream decode`.")]
RealtimeOpt = Annotated[bool, typer.Option(
    "--realtime", help="Read the input no faster than real time (demos, latency tests).")]
RawOpt = Annotated[bool, typer.Option(
    "--raw", help="Input is headerless signed 16-bit little-endian PCM (needs --rate and --channels).")]
RAW_RATES = (1000, MAX_RATE)  # the --raw rates taken, in Hz
RateOpt = Annotated[Optional[int], typer.Option(help="Sample rate of --raw input, in Hz.")]
ChannelsOpt = Annotated[Optional[int], typer.Option(help="Channels of --raw input (interleaved).")]
ChunkOpt = Annotated[float, typer.Option("--chunk-ms", help="Input read size in milliseconds.")]
PacketOpt = Annotated[Optional[int], typer.Option(
    "--packet-frames", help=(
        "Frames per packet (default to - or tcp://: the fewest frames that last 20 ms, 2 at 75 Hz or 26.7 ms; "
        "1 for the lowest latency. "
        "To a file: compress's packets, which keep it near its bitrate)."))]

DecodeInput = Annotated[str, typer.Option("--input", "-i", help=(
    ".rvq file, - for stdin, or tcp://HOST:PORT to listen on for one encoder (port 0: any free port, printed)."))]
DecodeOutput = Annotated[str, typer.Option("--output", "-o", help=(
    "Audio file (.wav or .flac), or - for raw signed 16-bit little-endian PCM on stdout at the stream's "
    "rate and channels."))]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    help="Give up after this many seconds without a connection or data (default: wait).")]


def register(app: typer.Typer) -> None:
    app.add_typer(stream_app, name="stream")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@stream_app.command()
def encode(
    input: EncodeInput = "-",
    output: EncodeOutput = "-",
    kbps: KbpsOpt = 6.0,
    model: ModelOpt = None,
    realtime: RealtimeOpt = False,
    raw: RawOpt = False,
    rate: RateOpt = None,
    channels: ChannelsOpt = None,
    chunk_ms: ChunkOpt = 20.0,
    packet_frames: PacketOpt = None,
    threads: StreamThreadsOpt = 1,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Encode audio to a .rvq stream, writing each packet as soon as its frames are complete.

    Written to a file, the stream is a valid .rvq file for `rvqcodec decompress`.
    Ctrl-C ends the stream cleanly: the last packet and the end record are still written.
    """
    with user_errors():
        fmt = _raw_format(raw, rate, channels)
        set_threads(threads)
        with stop_on_signals(StopFlag()) as stop:
            r = encode_live(input, output, model, kbps, fmt, chunk_ms / 1000, packet_frames, realtime, force, stop)
    if r.damage:
        _say(f"warning: {r.damage}; coded as far as it could be read")
    if not quiet:
        _say(f"encoded {r.seconds:.2f} s: {r.frames} frames in {r.packets} packets, {r.bytes} bytes, "
             f"{r.kbps:.2f} kbps sent")
    if r.interrupted:
        _say(f"interrupted: stream finalised after {r.seconds:.2f} s")
        raise typer.Exit(128 + stop.signal)


def _raw_format(raw: bool, rate: int | None, channels: int | None) -> PcmFormat | None:
    if not raw:
        if rate is not None or channels is not None:
            raise CodecError("--rate and --channels describe --raw input; a WAV or audio file carries its own")
        return None
    if rate is None or channels is None:
        raise CodecError("--raw needs --rate and --channels (e.g. --raw --rate 24000 --channels 1)")
    if not RAW_RATES[0] <= rate <= RAW_RATES[1]:  # (--rate 24 for 24 kHz would code 1,000 times too long)
        raise CodecError(f"--rate is in Hz, {RAW_RATES[0]} to {RAW_RATES[1]} (e.g. 24000), got {rate}")
    return PcmFormat(rate, channels)


@stream_app.command()
def decode(
    input: DecodeInput = "-",
    output: DecodeOutput = "-",
    model: ModelOpt = None,
    timeout: TimeoutOpt = None,
    threads: StreamThreadsOpt = 1,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Decode a .rvq stream, writing audio as the packets arrive.

    Damaged or missing packets are concealed and counted on stderr; a stream that stops in
    the middle of a packet ends the output cleanly. Raw output may end with up to a frame of
    padding when the stream's length was unknown up front; file outputs are cut exactly.
    """
    with user_errors(), one_line_warnings(ClippingWarning):
        set_threads(threads)
        with stop_on_signals(StopFlag()) as stop:
            r = decode_live(input, output, model, force, timeout, stop,
                            on_listening=None if quiet else (lambda address: _say(f"listening on {address}")))
    s = r.stats
    if s.lost_frames or s.damaged_packets:
        damaged = f" ({s.damaged_packets} damaged packets)" if s.damaged_packets else ""
        _say(f"warning: {s.lost_frames} frames ({r.lost_seconds * 1000:.0f} ms) were lost and concealed{damaged}")
    if s.truncated and not (r.interrupted or r.timed_out):
        _say("warning: the stream stopped in the middle of a packet")
    elif r.unfinished and not r.interrupted:
        _say("warning: the stream ended without its end record (the encoder did not finish)")
    if r.timed_out:
        _say(f"warning: no data for {timeout:g} s; stopped")
    if not quiet:
        _say(f"decoded {r.seconds:.2f} s")
    if r.interrupted:
        _say("interrupted: output finalised")
        raise typer.Exit(128 + stop.signal)
