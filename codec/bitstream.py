"""The ``.rvq`` file format: a versioned header followed by independently parseable packets.

Layout (all integers little-endian)::

    header  magic "RVQC" | version u8 | id_len u8 | model id (utf-8) | weights hash 8 bytes
            | sample_rate u32 | original_rate u32 | channels u8 | frame_rate f32
            | codebook_size u16 | n_q u8 | num_samples u64 | packet_frames u16 | crc32 u32
    packet  sync 0xA5 | frames u16 | n_q u8 | codes | crc32 u32
    end     sync 0xA6 | num_samples u64 | crc32 u32          (streams of unknown length only)

``codes`` holds frames x channels x n_q indices (frame-major), each in exactly
log2(codebook_size) bits, LSB first, padded to a whole byte. Every packet but the last holds
``packet_frames`` frames, so packet ``i`` starts at a computable offset (seeking). Each CRC32
covers its packet (or header) from the first byte, so damage is detected per packet.
``num_samples`` is the length per channel at ``original_rate``; a stream written before the
length is known stores ``UNKNOWN_LENGTH`` there and appends an ``end`` record.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

from .errors import CodecError

MAGIC = b"RVQC"
VERSION = 1
PACKET_SYNC = 0xA5
END_SYNC = 0xA6
UNKNOWN_LENGTH = 2**64 - 1
_FIXED = struct.Struct("<IIBfHBQH")  # sample_rate .. packet_frames
_PACKET_HEAD = struct.Struct("<BHB")
_END = struct.Struct("<BQ")


class BitstreamError(CodecError):
    """A ``.rvq`` file that cannot be decoded (wrong magic, version, truncation, CRC...)."""


@dataclass(frozen=True)
class Header:
    model_id: str
    weights_hash: bytes  # first 8 bytes of the model's sha256 fingerprint
    sample_rate: int
    original_rate: int
    channels: int
    frame_rate: float
    codebook_size: int
    n_q: int
    num_samples: int
    packet_frames: int = 75

    @property
    def bits_per_code(self) -> int:
        return self.codebook_size.bit_length() - 1

    @property
    def kbps(self) -> float:
        """Nominal bitrate of the codes for all channels."""
        return self.frame_rate * self.n_q * self.bits_per_code * self.channels / 1000

    def packet_size(self, frames: int) -> int:
        return _PACKET_HEAD.size + payload_bytes(frames * self.channels * self.n_q, self.bits_per_code) + 4

    def encode(self) -> bytes:
        mid = self.model_id.encode()
        if len(mid) > 255 or len(self.weights_hash) != 8:
            raise ValueError("model id must be at most 255 bytes and the hash 8 bytes")
        body = (
            MAGIC + bytes([VERSION, len(mid)]) + mid + self.weights_hash
            + _FIXED.pack(self.sample_rate, self.original_rate, self.channels, self.frame_rate,
                          self.codebook_size, self.n_q, self.num_samples, self.packet_frames)
        )
        return body + struct.pack("<I", zlib.crc32(body))


def read_header(f: BinaryIO) -> Header:
    head = f.read(6)
    if len(head) < 4 or head[:4] != MAGIC:
        raise BitstreamError("not an .rvq file (wrong magic bytes)")
    if len(head) < 6:
        raise BitstreamError("truncated .rvq header")
    if head[4] != VERSION:
        raise BitstreamError(
            f".rvq format version {head[4]} is not supported by this rvqcodec (it reads version {VERSION}); "
            "upgrade rvqcodec"
        )
    rest = f.read(head[5] + 8 + _FIXED.size + 4)
    if len(rest) < head[5] + 8 + _FIXED.size + 4:
        raise BitstreamError("truncated .rvq header")
    body, crc = head + rest[:-4], struct.unpack("<I", rest[-4:])[0]
    if zlib.crc32(body) != crc:
        raise BitstreamError("corrupt .rvq header (CRC mismatch)")
    n = head[5]
    try:
        model_id = rest[:n].decode()
    except UnicodeDecodeError:
        raise BitstreamError("corrupt .rvq header (model id)") from None
    fields = _FIXED.unpack(rest[n + 8 : n + 8 + _FIXED.size])
    header = Header(model_id, rest[n : n + 8], *fields)
    if header.codebook_size < 2 or header.codebook_size & (header.codebook_size - 1) or not header.channels:
        raise BitstreamError("corrupt .rvq header (impossible field values)")
    return header


def payload_bytes(n_codes: int, bits: int) -> int:
    return (n_codes * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Integers ``< 2**bits`` -> bytes, ``bits`` bits each, LSB first."""
    flat = np.asarray(codes, dtype=np.uint32).reshape(-1)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise ValueError(f"code does not fit in {bits} bits")
    bitarr = ((flat[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bitarr.reshape(-1), bitorder="little").tobytes()


def unpack_codes(data: bytes, n_codes: int, bits: int) -> np.ndarray:
    bitarr = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n_codes * bits]
    weights = (1 << np.arange(bits, dtype=np.int64))
    return (bitarr.reshape(n_codes, bits).astype(np.int64) * weights).sum(axis=1)


def encode_packet(codes: np.ndarray, bits: int) -> bytes:
    """codes ``[F, C, K]`` -> one packet."""
    frames, _, n_q = codes.shape
    body = _PACKET_HEAD.pack(PACKET_SYNC, frames, n_q) + pack_codes(codes, bits)
    return body + struct.pack("<I", zlib.crc32(body))


def encode_end(num_samples: int) -> bytes:
    body = _END.pack(END_SYNC, num_samples)
    return body + struct.pack("<I", zlib.crc32(body))


@dataclass
class Packet:
    """A parsed packet: ``codes`` ``[F, C, K]``, or ``None`` when it was damaged."""

    index: int
    frames: int
    codes: np.ndarray | None
    error: str | None = None


def iter_packets(f: BinaryIO, header: Header, strict: bool = True) -> Iterator[Packet]:
    """Yield packets in order; an ``end`` record sets ``header``-independent length via ``.frames=-n``.

    ``strict``: raise :class:`BitstreamError` on the first damaged or truncated packet.
    Otherwise damaged packets are yielded with ``codes=None`` (their frame count if readable,
    else ``packet_frames``) and a truncated tail ends the iteration.
    """
    bits, index = header.bits_per_code, 0
    while True:
        head = f.read(_PACKET_HEAD.size)
        if not head:
            return
        if head[0] == END_SYNC:
            rest = f.read(_END.size - len(head) + 4)
            rec = head + rest
            if len(rec) < _END.size + 4 or zlib.crc32(rec[:-4]) != struct.unpack("<I", rec[-4:])[0]:
                if strict:
                    raise BitstreamError("corrupt or truncated end record")
                return
            yield Packet(index, -_END.unpack(rec[: _END.size])[1], None)
            return
        if len(head) < _PACKET_HEAD.size:
            if strict:
                raise BitstreamError(f"truncated .rvq file: packet {index} is incomplete")
            return
        sync, frames, n_q = _PACKET_HEAD.unpack(head)
        if sync != PACKET_SYNC or n_q != header.n_q or frames > header.packet_frames or frames == 0:
            if strict:
                raise BitstreamError(f"corrupt .rvq file: packet {index} has a damaged header")
            # Framing lost: assume a full packet so that later packets stay aligned.
            frames, size_ok = header.packet_frames, False
        else:
            size_ok = True
        size = header.packet_size(frames) - _PACKET_HEAD.size
        rest = f.read(size)
        if len(rest) < size:
            if strict:
                raise BitstreamError(f"truncated .rvq file: packet {index} is incomplete")
            return
        body, crc = head + rest[:-4], struct.unpack("<I", rest[-4:])[0]
        if not size_ok or zlib.crc32(body) != crc:
            if strict:
                raise BitstreamError(f"corrupt .rvq file: CRC mismatch in packet {index}")
            yield Packet(index, frames, None, "CRC mismatch")
        else:
            n_codes = frames * header.channels * header.n_q
            codes = unpack_codes(body[_PACKET_HEAD.size :], n_codes, bits)
            yield Packet(index, frames, codes.reshape(frames, header.channels, header.n_q))
        index += 1
