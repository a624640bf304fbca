"""``rvqcodec stream``: pipes, TCP on 127.0.0.1, Ctrl-C and EOF, damage, and user mistakes.

Processes and sockets all run under deadlines: a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from cli.main import app
from codec import Codec, compress_file, decompress_file, load, read_info, save_model
from codec.bitstream import parse_header, read_header
from codec.live import decode_live
from conftest import TINY, make_model, tone

runner = CliRunner()
LIMIT = 60.0  # seconds any process or socket may take before the test fails
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def invoke(*args: object, input: bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_user_error(result, contains: str, output: Path | None = None) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert contains in lines[0], lines[0]
    if output is not None:
        assert not output.exists() and not list(output.parent.glob(f".{output.name}*"))


@pytest.fixture(autouse=True)
def one_thread():
    """The stream commands run the model on one thread (and set it for this process too, under
    CliRunner); float results vary in the last bit with the thread count, so references must
    be computed the same way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def procs():
    """Started processes; any still running at the end is killed."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def spawn(procs: list, *args: object, **kw) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "cli", "stream", *map(str, args)], env=ENV, **kw)
    procs.append(p)
    return p


def read_until(fd: int, done, deadline: float) -> bytes:
    """Read ``fd`` until ``done(data)`` or end of file, failing at ``deadline``."""
    data = b""
    while not done(data):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {data[-200:]!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.fixture
def tiny(tmp_path) -> tuple[object, Path, Path]:
    """The TINY model as saved (fp16 weights), its file, and 0.5 s of 8 kHz mono 16-bit WAV."""
    path = tmp_path / "tiny.safetensors"
    save_model(make_model(TINY), path)
    model = load(path)
    wav = tmp_path / "in.wav"
    sf.write(str(wav), tone(0.5, 8000).T, 8000, subtype="PCM_16")
    return model, path, wav


def reference(tmp_path: Path, model, wav: Path, kbps: float) -> np.ndarray:
    """``compress`` + ``decompress`` of ``wav``, as int16 ``[T, C]``."""
    compress_file(wav, tmp_path / "ref.rvq", kbps=kbps, model=model, force=True)
    decompress_file(tmp_path / "ref.rvq", tmp_path / "ref.wav", model=model, force=True)
    return sf.read(str(tmp_path / "ref.wav"), dtype="int16", always_2d=True)[0]


def pcm(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="int16", always_2d=True)[0]


def test_stream_file_decompresses_exactly_like_compress(tmp_path, stereo_wav, small_model_file):
    ref = reference(tmp_path, load(small_model_file), stereo_wav, 3.0)
    for chunk_ms, packet_frames in [("3.7", "1"), ("111", "5")]:
        r = invoke("stream", "encode", "-i", stereo_wav, "-o", tmp_path / "s.rvq", "--kbps", "3",
                   "--model", small_model_file, "--chunk-ms", chunk_ms, "--packet-frames", packet_frames, "--force")
        assert r.exit_code == 0, r.output
        assert "kbps sent" in r.stderr and r.stdout == ""
        r = invoke("decompress", tmp_path / "s.rvq", tmp_path / "s.wav", "--model", small_model_file, "--force")
        assert r.exit_code == 0, r.output
        assert np.array_equal(pcm(tmp_path / "s.wav"), ref)


def test_a_stream_to_a_file_gets_the_packets_of_compress_unless_told(tmp_path, stereo_wav, small_model_file):
    """A file appears only once complete, so 20-ms packets would buy no latency, only framing
    (8 bytes each, 2.4 kbps at 75 Hz); stdout keeps the live packets."""
    def packet_frames(data: bytes) -> int:
        return parse_header(data)[0].packet_frames

    args = ("-i", stereo_wav, "--kbps", "1.5", "--model", small_model_file, "-q", "--force")
    assert invoke("compress", stereo_wav, tmp_path / "c.rvq", "--kbps", "1.5", "--model", small_model_file, "-q").exit_code == 0
    assert invoke("stream", "encode", *args, "-o", tmp_path / "s.rvq").exit_code == 0
    filed = packet_frames((tmp_path / "c.rvq").read_bytes())
    assert packet_frames((tmp_path / "s.rvq").read_bytes()) == filed > 2
    r = invoke("stream", "encode", *args, "-o", "-")
    assert r.exit_code == 0 and packet_frames(r.stdout_bytes) == 2  # 20 ms at the tiny model's 75 Hz
    assert invoke("stream", "encode", *args, "-o", tmp_path / "p.rvq", "--packet-frames", 2).exit_code == 0
    assert packet_frames((tmp_path / "p.rvq").read_bytes()) == 2
    assert (tmp_path / "s.rvq").stat().st_size < (tmp_path / "p.rvq").stat().st_size


def test_stream_encode_of_a_flac_that_stops_decoding_warns_and_codes_up_to_there(tmp_path, small_model_file):
    full, cut = tmp_path / "full.flac", tmp_path / "cut.flac"
    sf.write(str(full), tone(6.0, 24000).T, 24000, format="FLAC")
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    r = invoke("stream", "encode", "-i", cut, "-o", tmp_path / "s.rvq", "--model", small_model_file, "-q")
    assert r.exit_code == 0, r.output
    [line] = [line for line in r.stderr.splitlines() if line.strip()]
    assert line.startswith("warning: ") and "damaged" in line and str(cut) in line
    assert 0 < read_info(tmp_path / "s.rvq").num_samples < 6 * 24000
    cut.write_bytes(full.read_bytes()[:200])  # nothing decodes: an error, no output
    r = invoke("stream", "encode", "-i", cut, "-o", tmp_path / "t.rvq", "--model", small_model_file, "-q")
    assert_user_error(r, str(cut), tmp_path / "t.rvq")


def test_stream_decode_of_a_file_gives_its_samples_raw_or_as_wav_without_warnings(tmp_path, stereo_wav, small_model_file):
    """A file of known length has no end record, and that is no reason to warn; raw output
    holds the very samples the WAV output does (both are rounded by codec.pcm.to_pcm16)."""
    rvq = tmp_path / "c.rvq"
    assert invoke("compress", stereo_wav, rvq, "--kbps", "3", "--model", small_model_file, "-q").exit_code == 0
    r = invoke("stream", "decode", "-i", rvq, "-o", tmp_path / "s.wav", "--model", small_model_file)
    assert r.exit_code == 0 and r.stderr.startswith("decoded") and "warning" not in r.stderr, r.stderr
    r = invoke("stream", "decode", "-i", rvq, "--model", small_model_file, "-q")
    assert r.exit_code == 0 and r.stderr == ""
    wav = pcm(tmp_path / "s.wav")
    assert np.array_equal(np.frombuffer(r.stdout_bytes, "<i2").reshape(-1, 2), wav)
    r = invoke("stream", "decode", "-i", rvq, "-o", tmp_path / "c.rvq", "--model", small_model_file, "--force")
    assert_user_error(r, "unsupported output format")


def test_stdin_wav_and_raw_pcm_give_the_same_stream_and_decode_to_stdout(tmp_path, tiny):
    model, model_file, wav = tiny
    r = invoke("stream", "encode", "--model", model_file, "--kbps", "16", input=wav.read_bytes())
    assert r.exit_code == 0, r.output
    stream = r.stdout_bytes
    samples = pcm(wav)
    r = invoke("stream", "encode", "--model", model_file, "--kbps", "16", "--raw", "--rate", "8000",
               "--channels", "1", "-q", input=samples.astype("<i2").tobytes())
    assert r.exit_code == 0 and r.stderr == ""
    assert r.stdout_bytes == stream
    r = invoke("stream", "decode", "--model", model_file, "-q", input=stream)
    assert r.exit_code == 0 and r.stderr == ""
    out = np.frombuffer(r.stdout_bytes, "<i2").astype(int)
    ref = reference(tmp_path, model, wav, 16.0)[:, 0].astype(int)
    assert len(ref) <= len(out) <= len(ref) + 8  # raw output keeps the last frame's padding
    assert np.abs(out[: len(ref)] - ref).max() <= 1


def test_named_pipe_input_streams_like_stdin(tmp_path, tiny, procs):
    """``-i FIFO`` (or ``/dev/stdin``) is read in order as a WAV stream, like ``-i -``."""
    model, model_file, wav = tiny
    r = invoke("stream", "encode", "--model", model_file, "--kbps", "16", input=wav.read_bytes())
    assert r.exit_code == 0, r.output
    fifo = tmp_path / "live.wav"
    os.mkfifo(fifo)
    enc = spawn(procs, "encode", "-i", fifo, "--model", model_file, "--kbps", "16", "-q",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer = threading.Thread(target=fifo.write_bytes, args=(wav.read_bytes(),), daemon=True)
    writer.start()
    stream = read_until(enc.stdout.fileno(), lambda d: False, time.monotonic() + LIMIT)
    assert enc.wait(LIMIT) == 0, enc.stderr.read()
    assert stream == r.stdout_bytes


def test_pipe_round_trip(tmp_path, tiny, procs):
    model, model_file, wav = tiny
    out = tmp_path / "out.wav"
    enc = spawn(procs, "encode", "--model", model_file, "--kbps", "16", stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dec = spawn(procs, "decode", "--model", model_file, "-o", out, stdin=enc.stdout, stderr=subprocess.PIPE)
    enc.stdout.close()  # the decoder holds the pipe now
    data = wav.read_bytes()
    for i in range(0, len(data), 777):  # arrives in pieces, like a live source
        enc.stdin.write(data[i : i + 777])
        enc.stdin.flush()
    enc.stdin.close()  # EOF ends the stream
    assert enc.wait(LIMIT) == 0, enc.stderr.read()
    assert dec.wait(LIMIT) == 0, dec.stderr.read()
    assert "warning" not in dec.stderr.read().decode()
    ref = reference(tmp_path, model, wav, 16.0)
    got = pcm(out)
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref).max() <= 1


def test_tcp_round_trip(tmp_path, tiny, procs):
    model, model_file, wav = tiny
    out = tmp_path / "out.wav"
    dec = spawn(procs, "decode", "-i", "tcp://127.0.0.1:0", "-o", out, "--model", model_file, "--timeout", LIMIT,
                stderr=subprocess.PIPE)
    deadline = time.monotonic() + LIMIT
    line = read_until(dec.stderr.fileno(), lambda d: b"\n" in d, deadline).decode()
    assert line.startswith("listening on tcp://127.0.0.1:"), line
    address = line.split()[2]
    # The encoder runs in this process (the same CLI code, without a second torch start-up).
    r = invoke("stream", "encode", "-i", wav, "-o", address, "--model", model_file, "--kbps", "16", "--realtime")
    assert r.exit_code == 0, r.output
    assert dec.wait(max(1.0, deadline - time.monotonic())) == 0
    ref = reference(tmp_path, model, wav, 16.0)
    got = pcm(out)
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref).max() <= 1


def test_ctrl_c_finalises_the_encoder_stream(tmp_path, tiny, procs):
    model, model_file, _ = tiny
    enc = spawn(procs, "encode", "--model", model_file, "--kbps", "16", "--raw", "--rate", "8000", "--channels", "1",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + LIMIT
    data = read_until(enc.stdout.fileno(), lambda d: parse_header(d) is not None, deadline)  # it is running
    fed = (tone(0.1, 8000)[0] * 32767).astype("<i2")
    enc.stdin.write(fed.tobytes())
    enc.stdin.flush()  # stdin stays open: only Ctrl-C can end this stream
    data += read_until(enc.stdout.fileno(), lambda d: len(d) >= 100, deadline)  # packets came out
    enc.send_signal(signal.SIGINT)
    data += read_until(enc.stdout.fileno(), lambda d: False, deadline)
    assert enc.wait(LIMIT) == 130
    assert "interrupted: stream finalised" in enc.stderr.read().decode()
    path = tmp_path / "live.rvq"
    path.write_bytes(data)
    info = read_info(path)  # a complete, valid stream: end record included
    assert not info.truncated and not info.damaged_packets and 0 < info.num_samples <= len(fed)
    decompress_file(path, tmp_path / "live.wav", model=model)
    assert sf.info(str(tmp_path / "live.wav")).frames == info.num_samples


def layout(data: bytes, packet_frames: int) -> tuple[int, int]:
    """Sizes of a stream's header and of its full packets."""
    header = read_header(io.BytesIO(data))
    return len(header.encode()), header.packet_size(packet_frames)


def partial_stream(model, tmp_path: Path) -> tuple[bytes, int]:
    """A stream cut in the middle of a packet, and the samples of its complete packets."""
    wav = tmp_path / "part.wav"
    sf.write(str(wav), tone(0.3, 8000).T, 8000)
    r = invoke("stream", "encode", "-i", wav, "-o", tmp_path / "p.rvq", "--model", tmp_path / "tiny.safetensors",
               "--kbps", "16", "--packet-frames", "10", "--force", "-q")
    assert r.exit_code == 0, r.output
    data = (tmp_path / "p.rvq").read_bytes()
    header, packet = layout(data, 10)
    return data[: header + 7 * packet + 5], 7 * 10 * 4  # hop 4 at the input rate


def test_connection_closed_mid_packet_ends_the_output_cleanly(tmp_path, tiny):
    model, _, _ = tiny
    data, samples = partial_stream(model, tmp_path)
    addresses: list[str] = []
    result: dict = {}
    out = tmp_path / "out.wav"
    worker = threading.Thread(target=lambda: result.update(r=decode_live(
        "tcp://127.0.0.1:0", str(out), model, timeout=LIMIT, on_listening=addresses.append)))
    worker.start()
    deadline = time.monotonic() + LIMIT
    while not addresses:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.01)
    host, port = addresses[0][len("tcp://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=LIMIT) as sock:
        sock.sendall(data)
    worker.join(LIMIT)
    assert not worker.is_alive()
    r = result["r"]
    assert r.stats.truncated and not r.stats.ended and r.stats.frames == 70
    assert sf.info(str(out)).frames == samples


def interrupt_decoder_after(procs, tmp_path: Path, model_file: Path, data: bytes, samples: int) -> str:
    """``stream decode`` from TCP to ``out.wav``, sent ``data`` over a connection that stays
    open; once ``samples`` (less the last frames) are in its temporary output, Ctrl-C. It must
    exit 130; -> its stderr."""
    dec = spawn(procs, "decode", "-i", "tcp://127.0.0.1:0", "-o", tmp_path / "out.wav", "--model", model_file,
                stderr=subprocess.PIPE)
    deadline = time.monotonic() + LIMIT
    address = read_until(dec.stderr.fileno(), lambda d: b"\n" in d, deadline).decode().split()[2]
    host, port = address[len("tcp://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=LIMIT) as sock:
        sock.sendall(data)  # and the connection stays open: the decoder waits for more
        while sum(p.stat().st_size for p in tmp_path.glob(".out.wav.*")) < 44 + 2 * (samples - 16):
            assert time.monotonic() < deadline and dec.poll() is None
            time.sleep(0.02)
        dec.send_signal(signal.SIGINT)
        assert dec.wait(LIMIT) == 130
    return dec.stderr.read().decode()


def test_ctrl_c_finalises_the_decoder_output(tmp_path, tiny, procs):
    model, model_file, _ = tiny
    data, samples = partial_stream(model, tmp_path)  # 7 packets and a part
    assert "interrupted: output finalised" in interrupt_decoder_after(procs, tmp_path, model_file, data, samples)
    assert sf.info(str(tmp_path / "out.wav")).frames == samples


def test_ctrl_c_on_a_file_of_known_length_ends_the_output_where_its_audio_does(tmp_path, tiny, procs):
    """A compress output holds its length; stopped part way, the decoder must not conceal (and
    decode) all the rest of that length, nor report it as lost."""
    model, model_file, wav = tiny  # 0.5 s: 1,000 frames at hop 4
    rvq = tmp_path / "known.rvq"
    compress_file(wav, rvq, kbps=16, model=model, packet_frames=10)
    data = rvq.read_bytes()
    header, packet = layout(data, 10)
    stderr = interrupt_decoder_after(procs, tmp_path, model_file, data[: header + 7 * packet], 7 * 10 * 4)
    assert "interrupted: output finalised" in stderr and "warning" not in stderr, stderr
    assert sf.info(str(tmp_path / "out.wav")).frames == 7 * 10 * 4


def test_damaged_stream_is_concealed_and_reported(tmp_path, tiny):
    model, model_file, wav = tiny
    r = invoke("stream", "encode", "-i", wav, "-o", tmp_path / "s.rvq", "--model", model_file, "--kbps", "16",
               "--packet-frames", "10", "-q")
    data = bytearray((tmp_path / "s.rvq").read_bytes())
    header, packet = layout(data, 10)
    data[header + 3 * packet + 6] ^= 0x55  # inside the codes of packet 3
    r = invoke("stream", "decode", "-o", tmp_path / "out.wav", "--model", model_file, "-q", input=bytes(data))
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == "warning: 10 frames (5 ms) were lost and concealed (1 damaged packets)"
    assert sf.info(str(tmp_path / "out.wav")).frames == sf.info(str(wav)).frames


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, contains", [
    (["encode", "-i", "{tmp}/missing.wav"], "input file not found"),
    (["encode", "-i", "{wav}", "-o", "tcp://127.0.0.1"], "bad address"),
    (["encode", "-i", "{wav}", "-o", "udp://127.0.0.1:5000"], "unsupported address"),
    (["encode", "-i", "{wav}", "-o", "tcp://127.0.0.1:{port}"], "connection refused"),
    (["encode", "-i", "{wav}", "--raw"], "--raw needs --rate and --channels"),
    (["encode", "-i", "{wav}", "--rate", "8000"], "describe --raw input"),
    (["encode", "-i", "{wav}", "--raw", "--rate", "8000", "--channels", "0"], "unsupported PCM format"),
    (["encode", "-i", "{wav}", "--kbps", "5"], "unsupported bitrate"),
    (["encode", "-i", "tcp://127.0.0.1:5000"], "tcp:// inputs are for stream decode"),
    (["encode", "-i", "{wav}", "--chunk-ms", "inf"], "--chunk-ms"),
    (["encode", "-i", "{wav}", "--chunk-ms", "0"], "--chunk-ms"),
    (["encode", "-i", "{wav}", "--packet-frames", "0"], "frames per packet"),
    (["encode", "-i", "{wav}", "-o", "{tmp}/out.wav"], "must be a .rvq file"),
    (["decode", "-i", "{tmp}/missing.rvq", "-o", "{out}"], "input file not found"),
    (["decode", "-i", "{wav}", "-o", "{tmp}/out.mp3"], "unsupported output format"),
    (["decode", "-i", "{wav}", "-o", "tcp://127.0.0.1:5000"], "tcp:// outputs are for stream encode"),
    (["decode", "-i", "{wav}", "-o", "{out}"], "not an .rvq file"),
    (["decode", "-i", "tcp://127.0.0.1:0", "-o", "{out}", "--timeout", "0.2", "-q"], "no connection on tcp://127.0.0.1:"),
    (["encode", "-i", "{wav}", "--raw", "--rate", "24", "--channels", "1"], "--rate is in Hz"),
    (["decode", "-i", "tcp://127.0.0.1:0", "-o", "{out}", "--timeout", "-5", "-q"], "timeout must be more than 0"),
    (["decode", "-i", "tcp://127.0.0.1:0", "-o", "{out}", "--timeout", "0", "-q"], "timeout must be more than 0"),
    (["encode", "-i", "{wav}", "--packet-frames", "two"], "Invalid value for '--packet-frames'"),
], ids=["missing", "no-port", "scheme", "refused", "raw-rate", "rate-no-raw", "raw-channels", "kbps",
        "tcp-input", "chunk-inf", "chunk-0", "packet-0", "encode-suffix", "missing-rvq", "suffix", "tcp-output", "not-rvq",
        "no-connection", "rate-in-khz", "timeout-negative", "timeout-0", "packet-frames-text"])
def test_user_mistakes_give_one_line(tmp_path, tiny, args, contains):
    _, model_file, wav = tiny
    out = tmp_path / "out.wav"
    subs = {"tmp": tmp_path, "wav": wav, "out": out, "port": free_port()}
    kbps = ["--kbps", "16"] if args[0] == "encode" and "--kbps" not in args else []  # TINY's rates
    r = invoke("stream", *[a.format(**subs) for a in args], "--model", model_file, *kbps)
    assert_user_error(r, contains, out)


@pytest.mark.parametrize("command, data, contains", [
    ("encode", b"", "not a WAV stream"),
    ("encode", b"RIFF\x00\x00\x00\x00WAVEfmt ", "ended before its sample data"),
    ("encode-raw", b"", "no audio samples arrived"),
    ("decode", b"", "ended before its .rvq header"),
    ("decode", b"RVQC\x01", "ended before its .rvq header"),
    ("decode", b"RVQC\x09", "version 9"),
])
def test_bad_stdin_gives_one_line(tiny, command, data, contains):
    _, model_file, _ = tiny
    raw = ["--raw", "--rate", "8000", "--channels", "1"] if command == "encode-raw" else []
    kbps = ["--kbps", "16"] if command.startswith("encode") else []
    command = command.removesuffix("-raw")
    assert_user_error(invoke("stream", command, "--model", model_file, *kbps, *raw, input=data), contains)


def test_output_delay_is_dropped_by_file_and_stream_decoders(tmp_path, stereo_wav, small_model):
    """A model whose output trails its input by D samples: decompress and stream decode both
    drop the first D (at the file's rate: 44.1 kHz here, the model's 24 kHz), and keep the length."""
    delay, skip = 37, round(37 * 44100 / 24000)
    delayed = Codec(dataclasses.replace(small_model.cfg, output_delay=delay)).eval()
    delayed.load_state_dict(small_model.state_dict())  # the same weights: it reads the same files
    rvq = tmp_path / "c.rvq"
    compress_file(stereo_wav, rvq, kbps=3, model=small_model)
    decompress_file(rvq, tmp_path / "plain.wav", model=small_model)
    decompress_file(rvq, tmp_path / "aligned.wav", model=delayed)
    plain, aligned = pcm(tmp_path / "plain.wav"), pcm(tmp_path / "aligned.wav")
    assert plain.shape == aligned.shape
    assert np.array_equal(aligned[: len(plain) - skip], plain[skip:])
    assert not np.array_equal(aligned, plain)
    decode_live(str(rvq), str(tmp_path / "live.wav"), delayed)
    assert np.array_equal(pcm(tmp_path / "live.wav"), aligned)


def test_a_delayed_decoder_still_decodes_the_last_samples(tmp_path, small_model):
    """The encoder codes output_delay samples of silence past the end, so the samples the
    decoder drops at the start do not leave zeros at the end, even for an input of whole
    frames (where no padding of the last frame would cover them)."""
    delay = 37
    delayed = Codec(dataclasses.replace(small_model.cfg, output_delay=delay)).eval()
    delayed.load_state_dict(small_model.state_dict())
    wav = tmp_path / "frames.wav"
    sf.write(str(wav), tone(50 * small_model.hop_length / 24000, 24000)[0], 24000, subtype="FLOAT")
    for model, name in ((small_model, "plain"), (delayed, "aligned")):
        compress_file(wav, tmp_path / f"{name}.rvq", kbps=3, model=model)
        decompress_file(tmp_path / f"{name}.rvq", tmp_path / f"{name}.wav", model=model)
    plain, aligned = pcm(tmp_path / "plain.wav"), pcm(tmp_path / "aligned.wav")
    assert len(plain) == len(aligned) == 50 * small_model.hop_length
    assert np.array_equal(aligned[: len(plain) - delay], plain[delay:])  # the same codes up to the end
    assert np.abs(aligned[-delay:].astype(np.int32)).max() > 100  # audio, not padding


HANGUP = """
import os, signal, sys
from codec.endpoints import StopFlag, ending_signals, stop_on_signals
with stop_on_signals(StopFlag()) as flag:  # (the stream commands' and the training loop's)
    os.kill(os.getpid(), signal.SIGHUP)
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
sys.exit(0 if flag.signal == signal.SIGHUP and signal.SIGHUP not in ending_signals() else 3)
"""


def test_a_hangup_ends_a_stream_or_a_training_run_as_sigterm_does():
    """A closed terminal (SIGHUP) finalises the stream / checkpoints the run instead of killing
    the process; under nohup it stays ignored. (In a child: an unhandled SIGHUP would end the
    test run.)"""
    r = subprocess.run([sys.executable, "-c", HANGUP], capture_output=True, text=True, timeout=LIMIT, env=ENV)
    assert r.returncode == 0, (r.returncode, r.stderr)
