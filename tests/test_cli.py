"""The command line through Typer's CliRunner: round trips and every user mistake."""

from __future__ import annotations

import importlib.abc
import math
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

import cli
from cli.main import app
from codec import read_info

from conftest import tone

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, output: Path | None = None) -> None:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    if output is not None:
        assert not output.exists()
        assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")]


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_round_trip_keeps_rate_channels_and_length(tmp_path, stereo_wav, small_model_file, suffix):
    rvq, out = tmp_path / "x.rvq", tmp_path / f"y{suffix}"
    r = invoke("compress", stereo_wav, rvq, "--kbps", "3", "--model", small_model_file)
    assert r.exit_code == 0, r.output
    assert "kbps" in r.stdout
    r = invoke("decompress", rvq, out, "--model", small_model_file)
    assert r.exit_code == 0, r.output
    src, dst = sf.info(str(stereo_wav)), sf.info(str(out))
    assert (dst.samplerate, dst.channels, dst.frames) == (src.samplerate, src.channels, src.frames)


def test_info_reports_header_bitrate_and_crc(tmp_path, stereo_wav, small_model_file):
    rvq = tmp_path / "x.rvq"
    invoke("compress", stereo_wav, rvq, "--kbps", "6", "--model", small_model_file, "--quiet")
    r = invoke("info", rvq)
    assert r.exit_code == 0, r.output
    assert "test-small" in r.stdout and "44100 Hz" in r.stdout and "crc          ok" in r.stdout
    assert "12 kbps of codes" in r.stdout  # 6 kbps per channel, two channels
    assert "\ncodes " not in r.stdout  # not a built-in model: its layout is not known here
    data = bytearray(rvq.read_bytes())
    data[-10] ^= 0xFF
    rvq.write_bytes(bytes(data))
    r = invoke("info", rvq)
    assert r.exit_code == 1 and "1 damaged packet" in r.stdout


@pytest.mark.parametrize("kbps", [6, 12, 24])
def test_info_shows_what_the_default_models_codes_hold(tmp_path, kbps):
    """A built-in model's file: its levels and, where the config codes the low band, the
    words, coefficients and top of the band (worked out here from the config); a model that
    is not built in gets no such row (above)."""
    from codec.weights import DEFAULT_MODEL, registered_config

    wav, rvq = tmp_path / "x.wav", tmp_path / "x.rvq"
    sf.write(wav, tone(0.5, 24000)[0], 24000)
    assert invoke("compress", wav, rvq, "--kbps", kbps, "--quiet").exit_code == 0
    r = invoke("info", rvq)
    assert r.exit_code == 0, r.output
    cfg = registered_config(DEFAULT_MODEL)
    n_q = round(kbps * 1000 / 75 / 10)
    levels = dict(zip(cfg.bandwidths, cfg.lowband_levels)).get(kbps, 0) or n_q
    row = next(line for line in r.stdout.splitlines() if line.startswith("codes "))
    assert f" {levels} log-mel levels" in row
    if levels < n_q:
        bins = ((n_q - levels) * 10 - 6) // 4
        assert f"+ {n_q - levels} low-band words ({bins} MDCT coefficients" in row
        assert f"below {bins * 24000 / 640:.0f} Hz" in row
    else:
        assert "low-band" not in row


def test_info_reads_the_header_alone_where_the_built_in_weights_are_missing(tmp_path, monkeypatch):
    """The layout row comes from the built-in model's file; without it (a trimmed package),
    info still shows the header and exits 0."""
    wav, rvq = tmp_path / "x.wav", tmp_path / "x.rvq"
    sf.write(wav, tone(0.5, 24000)[0], 24000)
    assert invoke("compress", wav, rvq, "--kbps", "12", "--quiet").exit_code == 0
    monkeypatch.setattr("codec.weights.WEIGHTS_DIR", tmp_path / "no-weights")
    r = invoke("info", rvq)
    assert r.exit_code == 0, r.output
    assert "crc          ok" in r.stdout and "\ncodes " not in r.stdout


def test_quiet_prints_nothing(tmp_path, stereo_wav, small_model_file):
    r = invoke("compress", stereo_wav, tmp_path / "x.rvq", "--model", small_model_file, "--quiet")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


def test_missing_input(tmp_path, small_model_file):
    out = tmp_path / "x.rvq"
    assert_user_error(invoke("compress", tmp_path / "nope.wav", out, "--model", small_model_file), out)
    r = invoke("compress", "-", out, "--model", small_model_file)  # (stdin is stream encode's)
    assert_user_error(r, out)
    assert "`rvqcodec stream encode -i -` reads standard input" in r.stderr


def test_unreadable_and_empty_input(tmp_path, small_model_file):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    out = tmp_path / "x.rvq"
    assert_user_error(invoke("compress", text, out, "--model", small_model_file), out)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 1), np.float32), 16000)
    assert_user_error(invoke("compress", empty, out, "--model", small_model_file), out)


def test_unsupported_kbps_lists_valid_values(tmp_path, stereo_wav, small_model_file):
    out = tmp_path / "x.rvq"
    r = invoke("compress", stereo_wav, out, "--kbps", "5", "--model", small_model_file)
    assert_user_error(r, out)
    assert "1.5, 3, 6, 12, 24" in r.stderr


def test_existing_output_needs_force(tmp_path, stereo_wav, small_model_file):
    out = tmp_path / "x.rvq"
    out.write_bytes(b"keep me")
    r = invoke("compress", stereo_wav, out, "--model", small_model_file)
    assert_user_error(r)
    assert out.read_bytes() == b"keep me"
    r = invoke("compress", stereo_wav, out, "--model", small_model_file, "--force")
    assert r.exit_code == 0 and out.read_bytes()[:4] == b"RVQC"


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_an_output_that_appears_during_the_run_is_kept_without_force(tmp_path, stereo_wav, small_model_file,
                                                                      monkeypatch, command):
    """Another run (or the user) writing the output path meanwhile: its file stays, this run
    fails in one line and leaves no temporary file (a rename would have replaced it)."""
    import codec.files

    rvq = tmp_path / "in.rvq"
    assert invoke("compress", stereo_wav, rvq, "--model", small_model_file, "-q").exit_code == 0
    out = tmp_path / ("x.rvq" if command == "compress" else "x.wav")
    publish = codec.files._publish

    def taken_meanwhile(tmp, path, force):
        path.write_bytes(b"written meanwhile")
        publish(tmp, path, force)

    monkeypatch.setattr(codec.files, "_publish", taken_meanwhile)
    r = invoke(command, stereo_wav if command == "compress" else rvq, out, "--model", small_model_file)
    assert_user_error(r)
    assert "appeared while this ran" in r.stderr
    assert out.read_bytes() == b"written meanwhile"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
    r = invoke(command, stereo_wav if command == "compress" else rvq, out, "--model", small_model_file, "--force", "-q")
    assert r.exit_code == 0 and out.read_bytes() != b"written meanwhile"


@pytest.mark.parametrize("error", ["ENOSYS", "EPERM", "EACCES"])
def test_a_file_system_without_hard_links_still_gets_its_output(tmp_path, stereo_wav, small_model_file, monkeypatch,
                                                                 error):
    """The output is published by a hard link where there is none yet (so that one appearing
    meanwhile is kept); where links fail, it is renamed after a last look."""
    import errno

    def no_links(*args, **kwargs):
        raise OSError(getattr(errno, error), os.strerror(getattr(errno, error)))

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "x.rvq"
    r = invoke("compress", stereo_wav, out, "--model", small_model_file, "-q")
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"RVQC" and not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_a_link_to_nowhere_at_the_output_needs_force(tmp_path, stereo_wav, small_model_file):
    out = tmp_path / "x.rvq"
    out.symlink_to(tmp_path / "nowhere" / "x.rvq")
    assert_user_error(invoke("compress", stereo_wav, out, "--model", small_model_file))
    assert out.is_symlink()
    assert invoke("compress", stereo_wav, out, "--model", small_model_file, "--force", "-q").exit_code == 0
    assert not out.is_symlink() and out.read_bytes()[:4] == b"RVQC"


@pytest.mark.parametrize("args, contains", [
    (["compress", "{wav}", "{out}", "--kbps", "abc"], "Invalid value for '--kbps'"),
    (["compress", "{wav}", "{out}", "--frobnicate"], "No such option: --frobnicate"),
    (["compress", "{wav}"], "Missing argument"),
    (["compresss", "{wav}", "{out}"], "No such command 'compresss'"),
], ids=["kbps-text", "unknown-option", "missing-argument", "unknown-command"])
def test_mistyped_command_lines_give_one_line(tmp_path, stereo_wav, args, contains):
    out = tmp_path / "x.rvq"
    r = invoke(*[a.format(wav=stereo_wav, out=out) for a in args])
    assert_user_error(r, out)
    assert r.exit_code == 1 and contains in r.stderr


def test_the_command_alone_prints_its_help():
    r = invoke()
    assert r.exit_code == 2 and "Usage" in r.stdout and "compress" in r.stdout and r.stderr == ""


def test_ctrl_c_while_the_app_loads_is_one_line(monkeypatch, capsys):
    """The console script's import of the app (PyTorch, a second or more) interrupted."""
    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "cli.main":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "cli.main")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as stopped:
        cli.run()
    assert stopped.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"


def test_info_counts_every_damaged_packet(good_rvq):
    """Damage in every packet leaves nothing to resynchronise on: one stretch of damaged bytes,
    counted as the packets it spans."""
    info = read_info(good_rvq)
    h = info.header
    assert info.packets >= 2 and not info.damaged_packets
    data = bytearray(good_rvq.read_bytes())
    for i in range(info.packets):
        data[len(h.encode()) + i * h.packet_size(h.packet_frames) + 6] ^= 0xFF
    good_rvq.write_bytes(bytes(data))
    r = invoke("info", good_rvq)
    assert r.exit_code == 1
    assert f"packets      {info.packets} (" in r.stdout
    assert f"{info.packets} damaged packet(s)" in r.stdout


@pytest.fixture
def good_rvq(tmp_path, stereo_wav, small_model_file) -> Path:
    rvq = tmp_path / "good.rvq"
    assert invoke("compress", stereo_wav, rvq, "--model", small_model_file, "-q").exit_code == 0
    return rvq


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"XXXX" + d[4:],  # wrong magic
        lambda d: d[:4] + b"\x07" + d[5:],  # future version
        lambda d: d[: len(d) // 2],  # truncated
        lambda d: d[:-20] + bytes([d[-20] ^ 1]) + d[-19:],  # CRC mismatch
        lambda d: b"",  # empty file
    ],
    ids=["magic", "version", "truncated", "crc", "empty"],
)
def test_damaged_rvq_is_refused_without_output(tmp_path, good_rvq, small_model_file, mutate):
    bad = tmp_path / "bad.rvq"
    bad.write_bytes(mutate(good_rvq.read_bytes()))
    out = tmp_path / "out.wav"
    assert_user_error(invoke("decompress", bad, out, "--model", small_model_file), out)


def test_bad_output_suffix_and_missing_rvq(tmp_path, good_rvq, small_model_file):
    assert_user_error(invoke("decompress", good_rvq, tmp_path / "out.mp4", "--model", small_model_file))
    assert_user_error(invoke("decompress", tmp_path / "none.rvq", tmp_path / "o.wav"))


def test_force_never_replaces_the_input_a_device_or_a_non_rvq_name(tmp_path, stereo_wav, small_model_file):
    """--force overwrites an older output, nothing else: the output is renamed into place,
    which would replace the input file itself, or a device node such as /dev/null."""
    audio = stereo_wav.read_bytes()
    named_rvq = tmp_path / "audio.rvq"  # audio under a bitstream's name, compressed onto itself
    named_rvq.write_bytes(audio)
    r = invoke("compress", named_rvq, named_rvq, "--model", small_model_file, "--force")
    assert_user_error(r)
    assert "the input file" in r.stderr and named_rvq.read_bytes() == audio
    for name in ("x.mp3", "x.wav", "x"):  # compress writes bitstreams only under .rvq names
        r = invoke("compress", stereo_wav, tmp_path / name, "--model", small_model_file, "--force")
        assert_user_error(r, tmp_path / name)
        assert ".rvq" in r.stderr
    fifo = tmp_path / "pipe.rvq"
    os.mkfifo(fifo)
    for force in (["--force"], []):  # without --force too: not "exists (use --force)"
        r = invoke("compress", stereo_wav, fifo, "--model", small_model_file, *force)
        assert_user_error(r)
        assert "not a regular file" in r.stderr and stat.S_ISFIFO(fifo.stat().st_mode)
    # decompress likewise: a .rvq file under an audio name, decoded onto itself
    bitstream = tmp_path / "codes.wav"
    invoke("compress", stereo_wav, tmp_path / "c.rvq", "--model", small_model_file, "-q")
    bitstream.write_bytes((tmp_path / "c.rvq").read_bytes())
    r = invoke("decompress", bitstream, bitstream, "--model", small_model_file, "--force")
    assert_user_error(r)
    assert bitstream.read_bytes() == (tmp_path / "c.rvq").read_bytes()


def test_pipes_non_finite_samples_and_folders_give_one_line(tmp_path, small_model_file):
    out = tmp_path / "x.rvq"
    fifo = tmp_path / "in.wav"
    os.mkfifo(fifo)  # soundfile cannot read a pipe block by block
    r = invoke("compress", fifo, out, "--model", small_model_file)
    assert_user_error(r, out)
    assert "stream encode" in r.stderr
    bad = tmp_path / "nan.wav"
    x = np.zeros((16000, 1), np.float32)
    x[8000] = np.nan
    sf.write(str(bad), x, 16000, subtype="FLOAT")
    r = invoke("compress", bad, out, "--model", small_model_file)
    assert_user_error(r, out)
    assert "non-finite sample" in r.stderr and "0.500 s" in r.stderr
    r = invoke("info", tmp_path)
    assert_user_error(r)
    assert "is a directory" in r.stderr


def test_console_script_prints_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "compress", str(tmp_path / "missing.wav"), str(tmp_path / "o.rvq")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: input file not found: {tmp_path / 'missing.wav'}"]


def test_progress_stops_at_its_total():
    """Decompress used to count file bytes at the nominal bitrate: with the header and packet
    framing the count ran past the total, tqdm dropped the total and drawing the bar raised."""
    from codec.files import Progress

    rate = 1000
    with Progress(12 * rate, rate, quiet=False, what="decompress") as progress:
        for _ in range(13):
            progress.advance(rate)
        assert progress.bar.n == pytest.approx(12.0)
        assert "12/12 s" in str(progress.bar)  # formats the bar


def test_a_long_file_decompresses_with_its_progress_bar(tmp_path, small_model_file):
    wav, rvq, out = tmp_path / "long.wav", tmp_path / "long.rvq", tmp_path / "long.wav.out.wav"
    sf.write(str(wav), tone(12.5, 24000).T, 24000)
    assert invoke("compress", wav, rvq, "--kbps", "1.5", "--model", small_model_file).exit_code == 0
    r = invoke("decompress", rvq, out, "--model", small_model_file)
    assert r.exit_code == 0, r.output
    assert sf.info(str(out)).frames == sf.info(str(wav)).frames


def _run_with_file_limit(limit: int, *args) -> subprocess.CompletedProcess:
    """``python -m cli ARGS`` allowed to write files of at most ``limit`` bytes (a full disk);
    every output of the test is well over 1,000 bytes."""
    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit_writes)


def test_write_failures_name_the_output_in_one_line(tmp_path, stereo_wav, small_model_file):
    rvq = tmp_path / "x.rvq"
    assert invoke("compress", stereo_wav, rvq, "--model", small_model_file, "-q").exit_code == 0
    for args, out in [(("compress", stereo_wav, tmp_path / "c.rvq"), tmp_path / "c.rvq"),
                      (("decompress", rvq, tmp_path / "d.wav"), tmp_path / "d.wav"),
                      (("decompress", rvq, tmp_path / "d.flac"), tmp_path / "d.flac"),
                      (("stream", "decode", "-i", rvq, "-o", tmp_path / "s.wav"), tmp_path / "s.wav")]:
        proc = _run_with_file_limit(1000, *args, "--model", small_model_file, "-q")
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"error: cannot write {out}: "), proc.stderr
        assert not list(tmp_path.glob(f".{out.name}*")) and not out.exists()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for args in [("compress", stereo_wav, not_a_folder / "x.rvq"), ("decompress", rvq, not_a_folder / "x.wav")]:
        r = invoke(*args, "--model", small_model_file)
        assert_user_error(r)
        assert "not a folder" in r.stderr
    r = invoke("compress", stereo_wav, tmp_path / "y.rvq", "--model", tmp_path)
    assert_user_error(r, tmp_path / "y.rvq")
    assert "is a folder" in r.stderr


class _Misdeclared:
    """An audio file whose header declares ``extra`` samples more than it holds (fewer, if
    negative): reading it still ends where its samples do."""

    def __init__(self, f: sf.SoundFile, extra: int) -> None:
        self.f, self.extra = f, extra

    def __getattr__(self, name):
        return getattr(self.f, name)

    @property
    def frames(self) -> int:
        return self.f.frames + self.extra

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_truncated_mp3_is_coded_as_far_as_it_reads(tmp_path, small_model_file):
    """A cut MP3 still declares its full length (libsndfile: 120,000 samples of which 55,343
    read), and soundfile's blocks() would have padded the rest with stale samples."""
    full, cut, rvq, out = tmp_path / "full.mp3", tmp_path / "cut.mp3", tmp_path / "cut.rvq", tmp_path / "cut.wav"
    sf.write(str(full), tone(5.0, 24000)[0], 24000, format="MP3")
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with sf.SoundFile(str(cut)) as f:
        declared, readable = f.frames, len(f.read(dtype="float32"))
    assert readable < declared - 24000  # the damage this test is about
    r = invoke("compress", cut, rvq, "--model", small_model_file, "-q")
    assert r.exit_code == 0 and "warning: " in r.stderr and "damaged" in r.stderr
    assert read_info(rvq).num_samples == readable
    assert invoke("decompress", rvq, out, "--model", small_model_file, "-q").exit_code == 0
    assert sf.info(str(out)).frames == readable


def test_a_flac_that_stops_decoding_is_coded_up_to_there_with_a_warning(tmp_path, small_model_file):
    """libsndfile raises part way through a cut FLAC ("decoder lost sync"), where a cut MP3
    just ends: all that decodes before it is coded (not only the whole 1-s blocks before the
    one that fails), and the warning says the input is damaged."""
    full, cut, rvq, out = tmp_path / "full.flac", tmp_path / "cut.flac", tmp_path / "cut.rvq", tmp_path / "cut.wav"
    sf.write(str(full), tone(6.0, 24000)[0], 24000, format="FLAC")
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with sf.SoundFile(str(cut)) as f, pytest.raises(sf.LibsndfileError):
        f.read(dtype="float32")  # the damage this test is about
    readable = 0
    with sf.SoundFile(str(cut)) as f, pytest.raises(sf.LibsndfileError):
        while len(x := f.read(240, dtype="float32")):
            readable += len(x)
    assert readable % 24000  # (it fails part way through a 1-s block)
    r = invoke("compress", cut, rvq, "--model", small_model_file, "-q")
    assert r.exit_code == 0, r.output
    [line] = [line for line in r.stderr.splitlines() if line.strip()]
    assert line.startswith("warning: ") and "damaged" in line and str(cut) in line
    coded = read_info(rvq).num_samples
    assert readable - 480 <= coded <= readable < 6 * 24000
    assert invoke("decompress", rvq, out, "--model", small_model_file, "-q").exit_code == 0
    assert sf.info(str(out)).frames == coded


def test_a_flac_cut_before_any_audio_is_a_one_line_error(tmp_path, small_model_file):
    full, cut = tmp_path / "full.flac", tmp_path / "cut.flac"
    sf.write(str(full), tone(6.0, 24000)[0], 24000, format="FLAC")
    cut.write_bytes(full.read_bytes()[:200])
    r = invoke("compress", cut, tmp_path / "cut.rvq", "--model", small_model_file, "-q")
    assert_user_error(r, tmp_path / "cut.rvq")
    assert str(cut) in r.stderr


def test_the_header_holds_the_samples_actually_read(tmp_path, stereo_wav, small_model_file, monkeypatch):
    """The decoded length is what could be read, not what the input's header declared: here
    it declares 4,000 samples fewer than it holds, and none is cut off."""
    import codec.files as files

    opened = files.open_audio
    monkeypatch.setattr(files, "open_audio", lambda path: _Misdeclared(opened(path), -4000))
    rvq, out = tmp_path / "x.rvq", tmp_path / "y.wav"
    result = files.compress_file(stereo_wav, rvq, model=small_model_file)
    real = sf.info(str(stereo_wav)).frames
    assert result.seconds == pytest.approx(real / 44100) and result.damage is None
    files.decompress_file(rvq, out, model=small_model_file)
    assert sf.info(str(out)).frames == real
    assert invoke("info", rvq).exit_code == 0  # consistent: no frame missing, none too many


def test_threads_option_reaches_the_model(tmp_path, stereo_wav, small_model_file, monkeypatch):
    import cli.options

    calls: list[int] = []
    monkeypatch.setattr(cli.options.torch, "set_num_threads", calls.append)
    rvq, out = tmp_path / "x.rvq", tmp_path / "y.wav"
    assert invoke("compress", stereo_wav, rvq, "--model", small_model_file, "--threads", "1", "-q").exit_code == 0
    assert invoke("decompress", rvq, out, "--model", small_model_file, "--threads", "1", "-q").exit_code == 0
    assert invoke("decompress", rvq, out, "--model", small_model_file, "--force", "-q").exit_code == 0
    assert calls == [1, 1]  # and PyTorch's own default without the option
    assert_user_error(invoke("compress", stereo_wav, rvq, "--model", small_model_file, "--threads", "0"))


def test_info_of_a_cut_stream_of_unknown_length_shows_no_bitrate(tmp_path, small_model):
    from codec.stream import StreamEncoder

    cut = tmp_path / "cut.rvq"
    with StreamEncoder(small_model, 24000, 1, 6.0, packet_frames=2) as enc:
        data = enc.header.encode() + enc.push(tone(0.2, 24000).T)
    assert len(data) > len(enc.header.encode())  # some packets, no end record
    cut.write_bytes(data)
    r = invoke("info", cut)
    assert r.exit_code == 1  # cut short
    assert "unknown actual" in r.stdout and "0.000 kbps" not in r.stdout
    assert "crc          truncated\n" in r.stdout  # (no packet damaged)
    info = read_info(cut)
    assert math.isnan(info.seconds) and math.isnan(info.actual_kbps)  # not 7.7e14 s and 0 kbps


def test_flac_output_of_more_than_8_channels_is_refused_in_one_line(tmp_path, small_model_file):
    wav, rvq, out = tmp_path / "nine.wav", tmp_path / "nine.rvq", tmp_path / "nine.flac"
    sf.write(str(wav), tone(0.2, 24000, channels=9).T, 24000)
    assert invoke("compress", wav, rvq, "--model", small_model_file, "-q").exit_code == 0
    r = invoke("decompress", rvq, out, "--model", small_model_file)
    assert_user_error(r, out)
    assert "at most 8 channels" in r.stderr
    assert invoke("decompress", rvq, tmp_path / "nine.wav.wav", "--model", small_model_file, "-q").exit_code == 0


SIGNAL_MID_WRITE = """
import os, sys
from pathlib import Path
import typer
from cli.errors import user_errors
from codec.files import atomic_output
signum, out = int(sys.argv[1]), Path(sys.argv[2])
try:
    with user_errors(), atomic_output(out, force=False) as tmp:
        tmp.write_bytes(b"half a file")
        os.kill(os.getpid(), signum)
        sys.exit("the signal did not interrupt")
except typer.Exit as stop:  # as the typer app turns it into the exit status
    sys.exit(stop.exit_code)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_mid_write_removes_the_temporary_output(tmp_path, signum):
    """Their default action kills the process before any ``finally``, which left a
    ``.NAME.PID.part`` file behind; inside user_errors they end it as Ctrl-C does. (In a child
    process: without the handler the signal would kill the test run.)"""
    out = tmp_path / "x.rvq"
    r = subprocess.run([sys.executable, "-c", SIGNAL_MID_WRITE, str(int(signum)), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + signum, (r.returncode, r.stderr)
    assert r.stderr.strip() == "error: interrupted"
    assert not list(tmp_path.iterdir())


def test_a_sighup_that_nohup_ignores_stays_ignored(tmp_path):
    from cli.errors import user_errors

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with user_errors():
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing happens
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN  # and restored as it was
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)


def test_clipped_samples_are_counted_in_one_warning_line(tmp_path):
    """A full-scale square wave decodes beyond full scale (its edges overshoot): the output is
    written, clipped, and decompress says how many samples in one ``warning:`` line (the API
    as a ClippingWarning); ``stream decode`` too. A quiet tone gives no warning."""
    from codec import ClippingWarning, decompress_file

    rate = 24000
    t = np.arange(rate) / rate
    square, quiet = tmp_path / "square.wav", tmp_path / "quiet.wav"
    sf.write(str(square), 0.99 * np.sign(np.sin(2 * np.pi * 200 * t)), rate, subtype="FLOAT")
    sf.write(str(quiet), 0.1 * np.sin(2 * np.pi * 200 * t), rate, subtype="FLOAT")
    for wav in (square, quiet):
        assert invoke("compress", wav, wav.with_suffix(".rvq"), "--kbps", "6", "-q").exit_code == 0
    r = invoke("decompress", square.with_suffix(".rvq"), tmp_path / "back.wav", "-q")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "clipped" in lines[0], r.stderr
    back, _ = sf.read(str(tmp_path / "back.wav"), dtype="int16")
    pinned = int(np.count_nonzero((back == 32767) | (back == -32768)))  # clipped, and any that rounded to it
    counted = int(lines[0].split("clipped at full scale: ")[1].split(" of ")[0].replace(",", ""))
    assert 0.9 * pinned <= counted <= pinned and f" of {len(back):,} decoded samples" in lines[0], (pinned, lines)
    with pytest.warns(ClippingWarning, match=f"clipped at full scale: {counted:,} of"):
        decompress_file(square.with_suffix(".rvq"), tmp_path / "api.wav")
    r = invoke("stream", "decode", "--input", square.with_suffix(".rvq"), "--output", tmp_path / "live.wav", "-q")
    assert r.exit_code == 0 and r.stderr.strip() == lines[0].replace("back.wav", "live.wav"), r.output
    proc = subprocess.run([sys.executable, "-m", "cli", "stream", "decode", "--input", str(square.with_suffix(".rvq")),
                           "--output", "-", "-q"], capture_output=True, timeout=120)
    assert proc.returncode == 0 and len(proc.stdout) == 2 * rate  # the audio alone on stdout, the warning on stderr
    assert proc.stderr.decode().strip().splitlines() == [lines[0].replace(str(tmp_path / "back.wav"), "standard output")]
    r = invoke("decompress", quiet.with_suffix(".rvq"), tmp_path / "quiet-back.wav", "-q")
    assert r.exit_code == 0 and r.stderr.strip() == "", r.stderr


@pytest.mark.parametrize("command", ["compress", "decompress", "stream encode", "stream decode"])
def test_an_output_ending_with_a_slash_is_refused_in_one_line(tmp_path, stereo_wav, good_rvq, small_model_file, command):
    """``out.rvq/`` names a folder: refused before any work, nothing written (a path object
    would drop the slash and write ``out.rvq``)."""
    source, name = (stereo_wav, "out.rvq") if command.endswith(("compress", "encode")) else (good_rvq, "out.wav")
    if command == "decompress" or command == "compress":
        args = [command, source, f"{tmp_path / name}/", "--model", small_model_file]
    else:
        args = [*command.split(), "--input", source, "--output", f"{tmp_path / name}/", "--model", small_model_file]
    r = invoke(*args)
    assert_user_error(r, tmp_path / name)
    assert "names a folder" in r.stderr


def test_the_api_refuses_an_output_ending_with_a_slash(tmp_path, stereo_wav, good_rvq, small_model_file):
    from codec import CodecError, compress_file, decompress_file
    from codec.live import decode_live, encode_live

    for name in ("out.rvq/", "out.rvq/.", b"out.rvq/"):
        with pytest.raises(CodecError, match="names a folder"):
            compress_file(stereo_wav, os.path.join(os.fsencode(tmp_path) if isinstance(name, bytes) else tmp_path, name),
                          model=small_model_file)
    with pytest.raises(CodecError, match="name is empty"):
        compress_file(stereo_wav, "", model=small_model_file)
    with pytest.raises(CodecError, match="names a folder"):
        encode_live(str(stereo_wav), f"{tmp_path / 'out.rvq'}/", model=small_model_file)
    for decode in (lambda out: decompress_file(good_rvq, out, model=small_model_file),
                   lambda out: decode_live(str(good_rvq), out, model=small_model_file)):
        with pytest.raises(CodecError, match="names a folder"):
            decode(f"{tmp_path / 'out.wav'}/.")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]
    compress_file(stereo_wav, tmp_path / "out.rvq", model=small_model_file)  # a path object without one: fine
    assert (tmp_path / "out.rvq").is_file()


def test_a_damaged_mp3_gives_one_warning_line_not_the_decoder_s_notes(tmp_path, small_model_file):
    """libmpg123 writes notes on a damaged MP3 straight to the process's standard error
    ("Illegal Audio-MPEG-Header", "Trying to resync..."): compress -q prints its own one
    warning line and nothing else, and the file is coded."""
    full, cut = tmp_path / "full.mp3", tmp_path / "cut.mp3"
    sf.write(str(full), tone(3.0, 48000)[0], 48000, format="MP3")
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2] + bytes(range(256)) * 4 + data[len(data) // 2 + 5000 :])
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "compress", str(cut), str(tmp_path / "o.rvq"), "--model", str(small_model_file), "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "damaged" in lines[0], proc.stderr
    assert read_info(tmp_path / "o.rvq").num_samples > 48000


def test_muting_the_native_stderr_restores_it_after_errors_and_threads():
    """fd 2 points where it did before after an exception inside, after overlapping threads
    (the first in redirects, the last out restores), and is left alone with ``on`` False."""
    import threading

    from codec.audio_io import native_stderr_muted

    def where() -> tuple[int, int]:
        st = os.fstat(2)
        return st.st_dev, st.st_ino

    before, null = where(), os.stat(os.devnull)
    with native_stderr_muted():
        assert where() == (null.st_dev, null.st_ino)
        with native_stderr_muted(on=False):
            assert where() == (null.st_dev, null.st_ino)
    with native_stderr_muted(on=False):
        assert where() == before
    with pytest.raises(RuntimeError), native_stderr_muted():
        raise RuntimeError("inside")
    assert where() == before
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(1000):
            with native_stderr_muted():
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert where() == before


def test_the_clipped_count_is_what_the_16_bit_conversion_changes():
    """pcm16 counts the values to_pcm16 cannot keep: 1.0 itself (32768 is out of range)
    and what rounds past either end, not 32767.4 / 32768 nor -1.0; NaN is silence."""
    from codec.pcm import pcm16, to_pcm16

    y = np.array([1.0, 32767.4 / 32768, 32767.6 / 32768, -1.0, -1.0 - 0.6 / 32768, 1.5, -3.0, np.nan, 0.25])
    changed = int(np.count_nonzero(to_pcm16(y).astype(np.int64) != np.rint(np.nan_to_num(y) * 32768)))
    assert pcm16(y)[1] == changed == 5
