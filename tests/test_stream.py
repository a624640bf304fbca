"""Streaming encoder/decoder: chunk-size independence, exact files, loss detection and concealment."""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import CodecError, bitstream, compress_file, decompress_file, read_info
from codec.files import TrimmingWriter
from codec.weights import DEFAULT_MODEL
from codec.bitstream import BitstreamError, End, iter_packets, read_header
from codec.pcm import PcmFormat, read_wav_header, to_pcm16
from codec.stream import (
    CONCEAL_BLOCK_FRAMES, StreamDecoder, StreamEncoder, expected_frames, file_packet_frames, live_packet_frames,
)
from conftest import SMALL, TINY, make_model, tone
from test_lowband import LOWBAND


@pytest.fixture(autouse=True)
def one_thread():
    """Frame-sized work gains nothing from threads, and loses a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stream_bytes(model, audio: np.ndarray, rate: int, kbps: float, packet_frames: int, rng=None) -> bytes:
    """Encode ``audio`` ``[T, C]`` in random chunks (whole if no ``rng``) -> a complete stream."""
    with StreamEncoder(model, rate, audio.shape[1], kbps, packet_frames) as enc:
        out, i = enc.header.encode(), 0
        while i < len(audio):
            n = int(rng.integers(1, 2000)) if rng is not None else len(audio)
            out += enc.push(audio[i : i + n])
            i += n
        return out + enc.finish()


def live_decode(model, data: bytes, rng=None, strict: bool = False) -> tuple[np.ndarray, StreamDecoder]:
    """Feed ``data`` in random cuts; -> audio ``[T, C]`` and the decoder (for its stats)."""
    parts, i = [], 0
    with StreamDecoder(model, strict=strict) as dec:
        while i < len(data):
            n = int(rng.integers(1, 60)) if rng is not None else len(data)
            parts.append(dec.push(data[i : i + n]))
            i += n
        parts.append(dec.finish())
    return np.concatenate([p for p in parts if p.size]), dec


def codes_of(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        header = read_header(f)
        return np.concatenate([p.codes for p in iter_packets(f, header) if not isinstance(p, End)])


def read_pcm(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="int16", always_2d=True)[0]


CASES = [(SMALL, 44100, 2, 3.0), (TINY, 8000, 1, 16.0), (TINY, 11025, 2, 8.0)]


@pytest.mark.parametrize("cfg, rate, channels, kbps", CASES, ids=["small-44k-stereo", "tiny-8k", "tiny-11k-stereo"])
@pytest.mark.parametrize("seed", [0, 1])
def test_stream_file_decompresses_exactly_like_compress(tmp_path, cfg, rate, channels, kbps, seed):
    rng = np.random.default_rng(seed)
    model = make_model(cfg, seed)
    wav = tmp_path / "in.wav"
    sf.write(str(wav), tone(float(rng.uniform(0.3, 1.2)), rate, channels, seed).T, rate)
    audio = sf.read(str(wav), dtype="float32", always_2d=True)[0]
    compress_file(wav, tmp_path / "c.rvq", kbps=kbps, model=model)
    decompress_file(tmp_path / "c.rvq", tmp_path / "c.wav", model=model)
    packet_frames = int(rng.integers(1, 6))
    (tmp_path / "s.rvq").write_bytes(stream_bytes(model, audio, rate, kbps, packet_frames, rng))
    decompress_file(tmp_path / "s.rvq", tmp_path / "s.wav", model=model)
    assert np.array_equal(codes_of(tmp_path / "s.rvq"), codes_of(tmp_path / "c.rvq"))
    assert np.array_equal(read_pcm(tmp_path / "s.wav"), read_pcm(tmp_path / "c.wav"))
    info = read_info(tmp_path / "s.rvq")
    assert info.num_samples == len(audio) and not info.truncated and not info.damaged_packets


def test_bytes_do_not_depend_on_chunking():
    model = make_model(TINY)
    audio = tone(0.5, 16000, 2).T.copy()
    runs = {stream_bytes(model, audio, 16000, 8.0, 3, np.random.default_rng(s)) for s in range(3)}
    assert len(runs) == 1 and runs == {stream_bytes(model, audio, 16000, 8.0, 3)}


def test_packets_go_out_as_soon_as_their_frames_are_complete():
    model = make_model(SMALL)
    with StreamEncoder(model, 24000, 1, 1.5, packet_frames=2) as enc:
        sizes = [len(enc.push(np.zeros((160, 1), np.float32))) for _ in range(8)]  # 4 frames of 320
    packet = enc.header.packet_size(2)
    assert sizes == [0, 0, 0, packet, 0, 0, 0, packet]
    assert live_packet_frames(75.0) == 2 and live_packet_frames(50.0) == 1


def test_live_decoder_does_not_depend_on_how_bytes_arrive(tmp_path):
    model = make_model(SMALL, 2)
    audio = tone(0.7, 24000, 1).T.copy()
    data = stream_bytes(model, audio, 24000, 6.0, 2)
    whole, dec = live_decode(model, data)
    cut, _ = live_decode(model, data, np.random.default_rng(0))
    assert np.array_equal(whole, cut)
    assert dec.stats.frames == expected_frames(dec.header, len(audio)) and dec.stats.ended
    assert not dec.stats.lost_frames and dec.num_samples == len(audio)
    # Within one 16-bit step of the file path (which decodes in 75-frame blocks).
    (tmp_path / "s.rvq").write_bytes(data)
    decompress_file(tmp_path / "s.rvq", tmp_path / "s.wav", model=model)
    ref = read_pcm(tmp_path / "s.wav").astype(int)
    live = to_pcm16(whole[: len(ref)]).astype(int)
    assert np.abs(live - ref).max() <= 1


# Damage ------------------------------------------------------------------------------------
PF = 2  # frames per packet in the damage tests


@pytest.fixture(scope="module")
def tiny_stream():
    """A TINY model (hop 4), its stream of 0.1 s at 8 kHz (100 packets) and the clean decoding."""
    torch.set_num_threads(1)
    model = make_model(TINY, 1)
    audio = tone(0.1, 8000, 1, 3).T.copy()
    data = stream_bytes(model, audio, 8000, 16.0, PF)
    clean, dec = live_decode(model, data)
    return model, data, dec.header, clean


def packet_offset(header, k: int) -> int:
    return len(header.encode()) + k * header.packet_size(PF)


def test_corrupt_packet_is_concealed_in_place(tiny_stream):
    model, data, header, clean = tiny_stream
    k = 40
    at = packet_offset(header, k) + 5
    bad = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    out, dec = live_decode(model, bad, np.random.default_rng(1))
    assert (dec.stats.damaged_packets, dec.stats.lost_frames) == (1, PF)
    assert out.shape == clean.shape and np.isfinite(out).all()
    start = k * PF * 4  # hop 4, same rate: the first sample of the damaged packet
    assert np.array_equal(out[:start], clean[:start])
    assert not np.array_equal(out[start : start + PF * 4], clean[start : start + PF * 4])
    with pytest.raises(BitstreamError, match="CRC mismatch in packet 40"):
        live_decode(model, bad, strict=True)


def test_missing_bytes_are_detected_from_the_framing(tiny_stream):
    model, data, header, clean = tiny_stream
    at = packet_offset(header, 30) + 3
    out, dec = live_decode(model, data[:at] + data[at + 4 :])  # 4 bytes of packet 30 lost
    assert (dec.stats.damaged_packets, dec.stats.lost_frames) == (1, PF)
    assert out.shape == clean.shape


def test_damage_in_consecutive_packets_counts_each_packet(tiny_stream):
    """Packets 20-24 each damaged: the parser finds no valid record between them, so one
    stretch of bytes stands for the five packets."""
    model, data, header, clean = tiny_stream
    bad = bytearray(data)
    for k in range(20, 25):
        bad[packet_offset(header, k) + 5] ^= 0xFF
    out, dec = live_decode(model, bytes(bad))
    assert (dec.stats.damaged_packets, dec.stats.lost_frames) == (5, 5 * PF)
    assert out.shape == clean.shape


def test_long_damage_is_dropped_in_whole_packets(tiny_stream, monkeypatch):
    """Damage longer than the parser holds while it looks for the next record (made small here)
    is dropped a whole number of packets at a time, so each piece counts the packets it held."""
    model, data, header, clean = tiny_stream
    monkeypatch.setattr(bitstream, "MAX_RESYNC_BYTES", 3 * header.packet_size(PF) + 1)
    a, b = packet_offset(header, 20), packet_offset(header, 60)
    bad = data[:a] + bytes(b - a) + data[b:]  # packets 20-59 zeroed: no sync byte to try
    out, dec = live_decode(model, bad, np.random.default_rng(2))
    assert (dec.stats.damaged_packets, dec.stats.lost_frames) == (40, 40 * PF)
    assert out.shape == clean.shape


def test_a_corrupt_end_record_counts_no_packet(tmp_path, tiny_stream):
    """It held no frames: the file reads as truncated (its length unknown), its packets as they are."""
    _, data, _, _ = tiny_stream
    good, bad = tmp_path / "good.rvq", tmp_path / "bad.rvq"
    good.write_bytes(data)
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # the end record's CRC
    before, after = read_info(good), read_info(bad)
    assert not before.truncated and not before.damaged_packets
    assert (after.packets, after.frames, after.damaged_packets, after.truncated) == (before.packets, before.frames, 0, True)


@pytest.mark.parametrize("at", range(-12, 0))
@pytest.mark.parametrize("value", [0xA6, 0xA5])
def test_a_sync_byte_in_a_damaged_end_record_makes_no_packet(tmp_path, tiny_stream, at, value):
    """A damaged end record whose bytes hold a sync value stays one corrupt end record: no
    packet made up from it, no frames concealed (a cut-off record needs a whole packet head)."""
    model, data, _, clean = tiny_stream
    bad = bytearray(data)
    if bad[at] == value:
        bad[at] ^= 0x01
    bad[at] = value
    (tmp_path / "bad.rvq").write_bytes(bytes(bad))
    (tmp_path / "good.rvq").write_bytes(data)
    before, after = read_info(tmp_path / "good.rvq"), read_info(tmp_path / "bad.rvq")
    assert (after.packets, after.frames, after.damaged_packets) == (before.packets, before.frames, 0)
    out, dec = live_decode(model, bytes(bad))
    assert (dec.stats.damaged_packets, dec.stats.lost_frames) == (0, 0) and np.array_equal(out, clean[: len(out)])


@pytest.mark.parametrize("extra", [5, 70_000])
def test_bytes_after_an_end_record_are_counted(tmp_path, tiny_stream, extra):
    _, data, _, _ = tiny_stream
    path = tmp_path / "more.rvq"
    path.write_bytes(data + bytes(range(256)) * (extra // 256) + bytes(extra % 256))
    info = read_info(path)
    assert info.trailing_bytes == extra and not info.truncated and not info.damaged_packets


def test_missing_whole_packets_are_counted_from_the_length(tiny_stream):
    model, data, header, clean = tiny_stream
    a, b = packet_offset(header, 10), packet_offset(header, 13)
    out, dec = live_decode(model, data[:a] + data[b:])
    assert dec.stats.lost_frames == 3 * PF and dec.stats.damaged_packets == 0
    assert out.shape == clean.shape


def test_stream_cut_mid_packet_ends_cleanly(tiny_stream):
    model, data, header, clean = tiny_stream
    cut = packet_offset(header, 25) + 3
    out, dec = live_decode(model, data[:cut], np.random.default_rng(2))
    assert dec.stats.truncated and not dec.stats.ended and not dec.stats.lost_frames
    assert len(out) == 25 * PF * 4
    assert np.array_equal(out, clean[: len(out)])


def test_damage_then_a_cut_last_packet_reads_as_one_damaged_packet_and_a_truncated_tail(tmp_path, tiny_stream):
    """The damaged packet's stretch ends where the cut-off packet starts (it was read as two
    damaged packets and no truncation)."""
    model, data, header, clean = tiny_stream
    bad = bytearray(data[: packet_offset(header, 41) + 5])  # cut inside packet 41
    bad[packet_offset(header, 40) + 5] ^= 0xFF
    out, dec = live_decode(model, bytes(bad))
    assert dec.stats.truncated and (dec.stats.damaged_packets, dec.stats.lost_frames) == (1, PF)
    assert len(out) == 41 * PF * 4
    path = tmp_path / "x.rvq"
    path.write_bytes(bytes(bad))
    info = read_info(path)
    assert info.truncated and (info.packets, info.frames, info.damaged_packets) == (41, 41 * PF, 1)


def test_decoder_survives_any_damage(tiny_stream):
    model, _, header, _ = tiny_stream
    data = stream_bytes(model, tone(0.03, 8000, 1, 4).T.copy(), 8000, 16.0, PF)  # 30 packets: fast
    rng = np.random.default_rng(0)
    body = len(header.encode())
    for trial in range(24):
        d = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(body, len(d)))
            kind = trial % 4
            if kind == 0:
                d[at] ^= int(rng.integers(1, 256))
            elif kind == 1:
                del d[at : at + int(rng.integers(1, 40))]
            elif kind == 2:
                d[at:at] = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
            else:
                d[at:at] = d[at : at + int(rng.integers(1, 40))]
        out, dec = live_decode(model, bytes(d), rng)
        assert np.isfinite(out).all() and np.abs(out).max() < 10
        if dec.stats.ended:  # frames missing from the known length are concealed too
            assert len(out) >= expected_frames(header, dec.num_samples) * 4


def test_a_cut_file_of_known_length_is_concealed_block_by_block_or_not_at_all(tmp_path):
    """A cut compress output (its header holds the length) is concealed up to that length in
    blocks of CONCEAL_BLOCK_FRAMES, so that memory does not grow with what is missing; a
    stream stopped on purpose is not concealed at all and ends where its frames do."""
    model = make_model(TINY, 1)
    wav, rvq = tmp_path / "in.wav", tmp_path / "x.rvq"
    sf.write(str(wav), tone(0.5, 8000).T, 8000)  # 1,000 frames at hop 4
    compress_file(wav, rvq, kbps=16, model=model, packet_frames=PF)
    data = rvq.read_bytes()
    header = read_header(io.BytesIO(data))
    kept = data[: packet_offset(header, 15)]  # 15 packets of PF = 2 frames
    for conceal in (True, False):
        with StreamDecoder(model) as dec:
            head = dec.push(kept)
            blocks = list(dec.finish_blocks(conceal))
        total = len(head) + sum(len(b) for b in blocks)
        if conceal:
            assert total == header.num_samples and dec.stats.lost_frames == expected_frames(header, 4000) - 30
            assert max(len(b) for b in blocks) <= CONCEAL_BLOCK_FRAMES * 4 + 4  # hop 4, same rate
            assert len(blocks) > (1000 - 30) // CONCEAL_BLOCK_FRAMES
        else:
            assert total <= 30 * 4 and dec.stats.lost_frames == 0


@pytest.fixture(scope="module")
def default_file(tmp_path_factory):
    """The default model's file of exactly 1 s at 6 kbps: 75 frames of audio in the first
    packet and, alone in the second, the frame of silence coded for the output delay."""
    from codec import load

    root = tmp_path_factory.mktemp("default")
    wav, rvq = root / "in.wav", root / "in.rvq"
    sf.write(str(wav), tone(1.0, 24000).T * 0.3, 24000)
    model = load()
    compress_file(wav, rvq, kbps=6, model=model)
    return model, rvq


def test_a_file_without_its_delay_frame_s_packet_is_truncated(tmp_path, default_file):
    """Cut at the last packet's start (or inside it): info and decompress both say so (the
    delay frame was left out of the frames a file should hold, and a cut inside a packet was
    not counted, so info said ok and decompress made the last 4 ms of silence up)."""
    model, rvq = default_file
    data = rvq.read_bytes()
    header = read_header(io.BytesIO(data))
    assert read_info(rvq).packets == 2 and read_info(rvq).frames == 76 and not read_info(rvq).truncated
    first = len(header.encode()) + header.packet_size(75)
    for cut in (first, first + 3):
        path = tmp_path / f"cut{cut}.rvq"
        path.write_bytes(data[:cut])
        info = read_info(path)
        assert info.truncated and info.frames == 75 and not info.damaged_packets
        with pytest.raises(BitstreamError, match="stream decode"):
            decompress_file(path, tmp_path / "out.wav", model=model)
        assert not (tmp_path / "out.wav").exists()


def test_a_cut_inside_the_last_packet_of_a_model_not_built_in_is_truncated(tmp_path):
    """info cannot know such a model's output delay (the frames it coded past the end): the
    cut packet itself tells."""
    model = make_model(LOWBAND)
    wav, rvq = tmp_path / "in.wav", tmp_path / "in.rvq"
    sf.write(str(wav), tone(1.0, 24000).T * 0.3, 24000)
    compress_file(wav, rvq, kbps=6, model=model)
    data = rvq.read_bytes()
    header = read_header(io.BytesIO(data))
    path = tmp_path / "cut.rvq"
    path.write_bytes(data[: len(header.encode()) + header.packet_size(75) + 3])
    assert not read_info(rvq).truncated and read_info(path).truncated


def test_a_file_of_other_weights_under_a_built_in_name_asks_for_them(tmp_path, default_file):
    """No --model was given: the message names the built-in weights it tried, and --model."""
    model, rvq = default_file
    data = rvq.read_bytes()
    header = read_header(io.BytesIO(data))
    other = dataclasses.replace(header, weights_hash=bytes(8)).encode() + data[len(header.encode()):]
    (tmp_path / "other.rvq").write_bytes(other)
    with pytest.raises(CodecError, match=f"not by the built-in {DEFAULT_MODEL} .*: pass --model PATH"):
        decompress_file(tmp_path / "other.rvq", tmp_path / "out.wav")


@pytest.mark.parametrize("extra", [b"\0", bytes(range(256)) * 2, b"\xa5" * 40], ids=["zero", "bytes", "syncs"])
def test_bytes_after_a_complete_file_are_ignored_and_counted(tmp_path, default_file, extra):
    """Appended by some tool: decompress gives the file's audio (it refused the file as
    truncated), info counts them, not as a damaged packet or more frames."""
    model, rvq = default_file
    path = tmp_path / "more.rvq"
    path.write_bytes(rvq.read_bytes() + extra)
    decompress_file(rvq, tmp_path / "clean.wav", model=model)
    decompress_file(path, tmp_path / "more.wav", model=model)
    clean = read_pcm(tmp_path / "clean.wav")
    assert np.array_equal(read_pcm(tmp_path / "more.wav"), clean)
    info = read_info(path)
    assert (info.frames, info.packets, info.damaged_packets, info.truncated, info.trailing_bytes) == (76, 2, 0, False, len(extra))
    with StreamDecoder(model) as dec:
        out = np.concatenate([dec.push(path.read_bytes()), dec.finish()])
    assert dec.stats.trailing_bytes == len(extra) and not dec.stats.truncated and not dec.stats.damaged_packets
    assert len(out) >= len(clean)


def test_strict_decoding_refuses_a_stream_without_end_record(tmp_path, tiny_stream):
    model, data, header, _ = tiny_stream
    path = tmp_path / "cut.rvq"
    path.write_bytes(data[: packet_offset(header, 20)])
    with pytest.raises(BitstreamError, match="no end record"):
        decompress_file(path, tmp_path / "out.wav", model=model)
    assert not (tmp_path / "out.wav").exists()
    assert read_info(path).truncated


# PCM byte streams ----------------------------------------------------------------------------
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("channels", [1, 3])
def test_wav_from_a_pipe_reads_like_soundfile(tmp_path, subtype, channels):
    path = tmp_path / "x.wav"
    sf.write(str(path), tone(0.05, 16000, channels).T * 1.5, 16000, subtype=subtype)  # clipped, extremes
    data = path.read_bytes()
    f = io.BytesIO(data)
    fmt, size = read_wav_header(f.read)
    assert (fmt.rate, fmt.channels) == (16000, channels)
    pcm = f.read(size)
    assert np.array_equal(fmt.to_float(pcm), sf.read(str(path), dtype="float32", always_2d=True)[0])


def test_wav_with_unknown_length_reads_to_the_end(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(str(path), tone(0.01, 8000).T, 8000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.find(b"data") + 4
    data[4:8] = data[at : at + 4] = b"\xff\xff\xff\xff"  # what streaming writers put in the size fields
    fmt, size = read_wav_header(io.BytesIO(bytes(data)).read)
    assert size is None and fmt == PcmFormat(8000, 1, "i2")


def test_16_bit_output_reads_back_as_the_samples_it_came_from(tmp_path):
    """to_pcm16 inverts reading 16-bit audio (k / 32768 -> k), clips, and maps NaN to 0 and inf to full scale."""
    k = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(to_pcm16(k.astype(np.float32) / 32768), k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning on stderr for inf
        edges = to_pcm16(np.array([1.0, 1.5, -1.0, -3.0, 0.49 / 32768, -0.51 / 32768, np.nan, np.inf, -np.inf], np.float32))
    assert edges.tolist() == [32767, 32767, -32768, -32768, 0, -1, 0, 32767, -32768]
    y = np.random.default_rng(0).uniform(-1.1, 1.1, (999, 2)).astype(np.float32)
    with sf.SoundFile(str(tmp_path / "y.wav"), "w", 8000, 2, subtype="PCM_16") as f:
        TrimmingWriter(f, len(y)).write(y)
    assert np.array_equal(read_pcm(tmp_path / "y.wav"), to_pcm16(y))


@pytest.mark.parametrize("n_q", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_file_packets_cost_no_more_framing_at_low_bitrates(n_q, channels):
    """A packet is one second, or the fewest frames holding 750 bytes of codes: its 8 bytes of
    framing are then never more than 1.07% of the codes (at 1.5 kbps mono one-second packets
    of 188 bytes paid 4.3%)."""
    frames = file_packet_frames(75.0, n_q, 10, channels)
    code_bytes = lambda f: f * n_q * 10 * channels / 8  # noqa: E731
    assert frames >= 75 and code_bytes(frames) >= 750
    assert frames == 75 or code_bytes(frames - 1) < 750  # the fewest that do
    assert 8 / code_bytes(frames) <= 0.0107


def test_compressed_files_use_the_file_packet_size(tmp_path, small_model):
    wav = tmp_path / "in.wav"
    sf.write(str(wav), tone(9.0, 24000).T, 24000)
    for kbps, frames in [(1.5, 300), (6.0, 75)]:
        rvq = tmp_path / f"{kbps}.rvq"
        compress_file(wav, rvq, kbps=kbps, model=small_model)
        info = read_info(rvq)
        assert info.header.packet_frames == frames and info.frames == expected_frames(info.header, info.num_samples)
        assert info.packets == -(-info.frames // frames)
        codes = info.frames * info.header.n_q * 10 / 8
        framing = info.bytes - len(info.header.encode()) - codes
        assert 8 * info.packets <= framing < 9 * info.packets  # 8 bytes a packet and its padding
