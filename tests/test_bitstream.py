"""The .rvq format: bit packing, header, packet framing, overhead and every kind of damage."""

from __future__ import annotations

import dataclasses
import io
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import CodecError, compress_file, decompress_file
from codec.bitstream import (
    MAGIC, BitstreamError, Header, encode_packet, iter_packets, pack_codes, read_header, unpack_codes,
)
from conftest import SMALL, make_model

HEADER = Header("rvq-test", b"\x01\x02\x03\x04\x05\x06\x07\x08", 24000, 44100, 2, 75.0, 1024, 8, 441000, 75)


@pytest.mark.parametrize("bits", [1, 3, 8, 10, 11, 16])
def test_pack_round_trip_uses_exactly_bits_per_code(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=777)
    data = pack_codes(codes, bits)
    assert len(data) == (777 * bits + 7) // 8
    assert np.array_equal(unpack_codes(data, 777, bits), codes)


def test_code_too_large_is_refused():
    with pytest.raises(ValueError):
        pack_codes(np.array([1024]), 10)


def test_header_round_trip():
    f = io.BytesIO(HEADER.encode())
    assert read_header(f) == HEADER


def make_stream(frames: int = 200) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, size=(frames, HEADER.channels, HEADER.n_q))
    data = HEADER.encode() + b"".join(
        encode_packet(codes[i : i + 75], 10) for i in range(0, frames, 75)
    )
    return data, codes


def test_packets_round_trip_and_can_be_seeked():
    data, codes = make_stream()
    f = io.BytesIO(data)
    header = read_header(f)
    decoded = np.concatenate([p.codes for p in iter_packets(f, header)])
    assert np.array_equal(decoded, codes)
    # Packet 2 starts at a computable offset.
    offset = len(HEADER.encode()) + 2 * header.packet_size(75)
    f.seek(offset)
    third = next(iter_packets(f, header))
    assert np.array_equal(third.codes, codes[150:])


def damage(data: bytes, where: int) -> bytes:
    return data[:where] + bytes([data[where] ^ 0x5A]) + data[where + 1 :]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"RIFF" + d[4:], "wrong magic"),
        (lambda d: d[:4] + bytes([99]) + d[5:], "version 99"),
        (lambda d: d[:20], "truncated .rvq header"),
        (lambda d: damage(d, 10), "corrupt .rvq header"),
        (lambda d: damage(d, len(HEADER.encode()) + 100), "CRC mismatch in packet 0"),
        (lambda d: damage(d, len(d) - 30), "CRC mismatch in packet 2"),
        (lambda d: d[:-5], "packet 2 is incomplete"),
        (lambda d: damage(d, len(HEADER.encode())), "packet 0 has a damaged header"),
    ],
    ids=["magic", "version", "short-header", "header-crc", "crc0", "crc2", "truncated", "packet-header"],
)
def test_every_kind_of_damage_is_detected(mutate, message):
    data, _ = make_stream()
    with pytest.raises(BitstreamError, match=message):
        f = io.BytesIO(mutate(data))
        list(iter_packets(f, read_header(f)))


@pytest.mark.parametrize("field, value", [
    ("sample_rate", 0), ("original_rate", 0), ("frame_rate", 0.0), ("frame_rate", float("nan")),
    ("frame_rate", float("inf")), ("frame_rate", -75.0), ("channels", 0), ("n_q", 0), ("codebook_size", 1000),
    ("original_rate", 768_001), ("original_rate", 2**32 - 1), ("sample_rate", 2_000_000_000),
])
def test_header_with_impossible_values_and_a_valid_crc_is_refused(field, value):
    """A header can be well formed, CRC included, and still describe no possible stream."""
    data = dataclasses.replace(HEADER, **{field: value}).encode()
    with pytest.raises(BitstreamError, match="impossible field values"):
        read_header(io.BytesIO(data))


def test_damaged_packet_is_reported_without_losing_the_others():
    data, codes = make_stream()
    f = io.BytesIO(damage(data, len(HEADER.encode()) + 100))
    packets = list(iter_packets(f, read_header(f), strict=False))
    assert [p.codes is None for p in packets] == [True, False, False]
    assert np.array_equal(packets[1].codes, codes[75:150])


def test_overhead_of_a_10s_mono_file_at_6kbps_is_under_2_percent(tmp_path):
    import soundfile as sf

    wav = tmp_path / "ten.wav"
    sf.write(str(wav), (np.random.default_rng(0).standard_normal(240000) * 0.1).astype(np.float32), 24000)
    model = make_model(SMALL)
    result = compress_file(wav, tmp_path / "ten.rvq", kbps=6, model=model)
    nominal = 10 * 6000 / 8
    assert result.frames == 750
    assert result.bytes <= 1.02 * nominal
    assert result.bytes > nominal  # the codes alone already take the nominal size


def test_file_codes_equal_offline_codes(tmp_path):
    """compress_file goes through the streaming path; it must match one offline encode."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(24000 * 2 + 123) * 0.2).astype(np.float32)
    sf.write(str(tmp_path / "a.wav"), audio, 24000, subtype="FLOAT")
    model = make_model(SMALL, 5)
    compress_file(tmp_path / "a.wav", tmp_path / "a.rvq", kbps=3, model=model)
    with open(tmp_path / "a.rvq", "rb") as f:
        header = read_header(f)
        from_file = np.concatenate([p.codes for p in iter_packets(f, header)])
    offline = model.encode(torch.from_numpy(audio)[None, None], kbps=3)[0].permute(2, 0, 1).numpy()
    assert header.num_samples == len(audio) and header.n_q == 4
    assert np.array_equal(from_file, offline)


def test_header_layout_is_little_endian_and_starts_with_magic():
    raw = HEADER.encode()
    assert raw[:4] == MAGIC and raw[4] == 1
    n = raw[5]
    sample_rate = struct.unpack("<I", raw[6 + n + 8 : 6 + n + 12])[0]
    assert sample_rate == 24000


def test_a_header_whose_frame_rate_is_not_the_model_s_is_refused(tmp_path):
    """Its frames would be read at another rate: a stream for some other model."""
    model = make_model(SMALL)
    wav, rvq = tmp_path / "x.wav", tmp_path / "x.rvq"
    sf.write(str(wav), np.zeros(2400, np.float32), 24000)
    compress_file(wav, rvq, kbps=6, model=model)
    data = rvq.read_bytes()
    header = read_header(io.BytesIO(data))
    bad = dataclasses.replace(header, frame_rate=header.frame_rate * 2).encode() + data[len(header.encode()):]
    (tmp_path / "bad.rvq").write_bytes(bad)
    decompress_file(rvq, tmp_path / "ok.wav", model=model)
    with pytest.raises(CodecError, match="stream parameters do not match"):
        decompress_file(tmp_path / "bad.rvq", tmp_path / "bad.wav", model=model)
