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

import io
import math
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
MAX_RATE = 768_000  # Hz: the highest sample rate a header holds, the input's or the model's
_FIXED = struct.Struct("<IIBfHBQH")  # sample_rate .. packet_frames
_PACKET_HEAD = struct.Struct("<BHB")
_END = struct.Struct("<BQ")
_CRC = struct.Struct("<I")
READ_BYTES = 1 << 16
MAX_RESYNC_BYTES = 1 << 16  # garbage held while looking for the next valid record


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
    if not head:
        raise BitstreamError("empty input: no .rvq header")
    _check_prefix(head.ljust(4, b"\0"))  # a file too short for the magic is no .rvq file either
    if len(head) < 6:
        raise BitstreamError("truncated .rvq header")
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
    if header.codebook_size < 2 or header.codebook_size & (header.codebook_size - 1) or not header.channels \
            or not header.n_q or not header.packet_frames or not 0 < header.sample_rate <= MAX_RATE \
            or not 0 < header.original_rate <= MAX_RATE or not (math.isfinite(header.frame_rate) and header.frame_rate > 0):
        raise BitstreamError("corrupt .rvq header (impossible field values)")
    return header


def parse_header(data: bytes) -> tuple[Header, int] | None:
    """The header at the start of a stream's first bytes and its size; None until all of it
    has arrived (a wrong magic or version is refused as soon as it shows)."""
    _check_prefix(data[:6])
    size = 6 + data[5] + 8 + _FIXED.size + 4 if len(data) >= 6 else None
    if size is None or len(data) < size:
        return None
    return read_header(io.BytesIO(bytes(data[:size]))), size


def _check_prefix(head: bytes) -> None:
    if head[:4] != MAGIC[: len(head[:4])]:
        raise BitstreamError("not an .rvq file (wrong magic bytes)")
    if len(head) >= 5 and head[4] != VERSION:
        raise BitstreamError(
            f".rvq format version {head[4]} is not supported by this rvqcodec (it reads version {VERSION}); "
            "upgrade rvqcodec"
        )


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
    """A parsed packet: ``codes`` ``[F, C, K]``, or ``None`` when it was damaged or lost, and
    then ``frames`` is the number of frames it is believed to have held and ``packets`` the
    number of packets (damaged bytes longer than a packet stand for several; a corrupt end
    record for none: the stream's length is then unknown, so it reads as truncated)."""

    index: int
    frames: int
    codes: np.ndarray | None
    error: str | None = None
    packets: int = 1


@dataclass(frozen=True)
class End:
    """The ``end`` record of a stream written before its length was known."""

    num_samples: int


class PacketParser:
    """Packets from bytes fed as they arrive: from a file, a pipe or a socket.

    ``strict``: the first damaged or truncated record raises :class:`BitstreamError`.
    Otherwise a record is trusted only when its CRC matches, and after damage the parser
    resynchronises on the next offset where a valid record starts. The skipped bytes come
    out as one damaged :class:`Packet` (``codes=None``) whose frame count is inferred from
    their length: one packet's frames when they are exactly one packet long (damage in
    place), otherwise as many full packets as they would span (bytes lost); a packet cut off by
    the end of the input (its head whole and plausible) ends the damage before it, and reads
    as a truncated tail. A packet removed
    whole leaves no trace in the framing (version-1 packets carry no sequence number); only
    the stream's length can reveal it. Bytes after the end record are ignored, and so are those
    after ``frames`` frames (the frames a stream of known length holds: whatever follows them,
    appended by a tool or a writer, is no part of it), counted in :attr:`trailing`.
    """

    def __init__(self, header: Header, strict: bool = True, frames: int | None = None) -> None:
        self.header, self.strict, self.frames_expected = header, strict, frames
        self.index = 0  # packets seen so far, damaged ones included
        self.frames = 0  # frames seen so far, damaged ones included
        self.ended = False  # end record seen, or all the frames expected
        self.truncated = False  # the stream stopped inside a record
        self.trailing = 0  # bytes ignored after the last frame expected
        self._buf = bytearray()
        self._scan = 1  # while resynchronising: next offset to try

    def feed(self, data: bytes) -> list[Packet | End]:
        """Records completed by ``data``; incomplete ones wait for the next call."""
        if not self.ended:
            self._buf += data
        else:
            self.trailing += len(data)
        return self._parse(eof=False)

    def close(self) -> list[Packet | End]:
        """End of input: the records still buffered (a truncated tail is dropped or raised)."""
        return self._parse(eof=True)

    def _parse(self, eof: bool) -> list[Packet | End]:
        out: list[Packet | End] = []
        while self._buf and not self.ended:
            if self.frames_expected is not None and self.frames >= self.frames_expected:
                self.ended, self.trailing = True, self.trailing + len(self._buf)
                self._buf.clear()
                break
            size, reason = self._record_at(0)
            if size > 0:
                out.append(self._take(size))
                continue
            if size < 0 and not eof:
                break  # the rest of the record has not arrived yet
            if self.strict:
                raise BitstreamError(self._message(reason))
            if size < 0:
                self.truncated = True
                self._buf.clear()
                break
            skipped = self._resync(eof)
            if skipped is None:
                break
            out.append(self._damaged(skipped, reason))
        return out

    def _record_at(self, q: int) -> tuple[int, str]:
        """Size of the valid record at offset ``q``; 0 if none starts there, -1 if more bytes are
        needed to tell. Also why it is not valid."""
        buf, h = self._buf, self.header
        if buf[q] == END_SYNC:
            n = _END.size + 4
            if len(buf) - q < n:
                return -1, "end"
            return (n, "") if zlib.crc32(buf[q : q + n - 4]) == _CRC.unpack_from(buf, q + n - 4)[0] else (0, "end")
        if len(buf) - q < _PACKET_HEAD.size:
            return -1, "incomplete"
        sync, frames, n_q = _PACKET_HEAD.unpack_from(buf, q)
        if sync != PACKET_SYNC or n_q != h.n_q or not 1 <= frames <= h.packet_frames:
            return 0, "header"
        n = h.packet_size(frames)
        if len(buf) - q < n:
            return -1, "cut"  # a whole, plausible packet head whose packet runs on past the bytes here
        return (n, "") if zlib.crc32(buf[q : q + n - 4]) == _CRC.unpack_from(buf, q + n - 4)[0] else (0, "crc")

    def _message(self, reason: str) -> str:
        return {
            "end": "corrupt or truncated end record",
            "incomplete": f"truncated .rvq file: packet {self.index} is incomplete",
            "header": f"corrupt .rvq file: packet {self.index} has a damaged header",
            "crc": f"corrupt .rvq file: CRC mismatch in packet {self.index}",
        }["incomplete" if reason == "cut" else reason]

    def _take(self, size: int) -> Packet | End:
        rec = bytes(self._buf[:size])
        del self._buf[:size]
        if rec[0] == END_SYNC:
            self.ended, self.trailing = True, self.trailing + len(self._buf)
            self._buf.clear()
            return End(_END.unpack_from(rec)[1])
        h = self.header
        frames = _PACKET_HEAD.unpack_from(rec)[1]
        codes = unpack_codes(rec[_PACKET_HEAD.size : -4], frames * h.channels * h.n_q, h.bits_per_code)
        self.index += 1
        self.frames += frames
        return Packet(self.index - 1, frames, codes.reshape(frames, h.channels, h.n_q))

    def _resync(self, eof: bool) -> int | None:
        """Offset of the next valid record (the bytes before it are damage), or None to wait."""
        buf, q = self._buf, self._scan
        while q < len(buf):
            hits = [i for i in (buf.find(PACKET_SYNC, q), buf.find(END_SYNC, q)) if i >= 0]
            if not hits:
                break
            q = min(hits)
            size, reason = self._record_at(q)
            if size > 0:
                return q
            if size < 0 and not eof:
                self._scan = q  # a candidate whose end has not arrived yet
                return None
            if reason == "cut":
                return q  # a packet cut off by the end of the input: the damage ends there, a truncated tail follows
            q += 1
        if eof:
            return len(buf)
        # Nothing valid yet: bound the memory held by dropping whole packets' worth, all but the
        # last packet's (whole, so that each piece dropped counts as the packets it held).
        keep = self.header.packet_size(self.header.packet_frames)
        if len(buf) > MAX_RESYNC_BYTES + keep:
            return max(keep, (len(buf) - keep) // keep * keep)
        self._scan = max(1, len(buf))
        return None

    def _damaged(self, skipped: int, reason: str) -> Packet:
        """Drop the ``skipped`` damaged bytes; the packet they stand for."""
        h = self.header
        del self._buf[:skipped]
        self._scan = 1
        if reason == "end" and skipped == _END.size + 4:
            return Packet(self.index, 0, None, "corrupt end record", packets=0)  # no frames were in it
        exact = [f for f in range(h.packet_frames, 0, -1) if h.packet_size(f) == skipped]
        packets = 1 if exact else -(-skipped // h.packet_size(h.packet_frames))
        frames = exact[0] if exact else packets * h.packet_frames
        if self.frames_expected is not None:  # (damage running on past the end: bytes appended)
            frames = max(0, min(frames, self.frames_expected - self.frames))
            packets = min(packets, -(-frames // h.packet_frames))
        self.index += packets
        self.frames += frames
        why = "CRC mismatch" if reason == "crc" and exact else "damaged or missing bytes"
        return Packet(self.index - packets, frames, None, why, packets)


def iter_packets(f: BinaryIO, header: Header, strict: bool = True, parser: PacketParser | None = None
                 ) -> Iterator[Packet | End]:
    """Records of ``f`` after its header, in order: packets, then the end record if any.

    ``strict``: raise :class:`BitstreamError` on the first damaged or truncated packet.
    Otherwise see :class:`PacketParser`: damaged packets come with ``codes=None`` and a
    truncated tail ends the iteration. ``parser``: one made by the caller (to read its
    counts after), instead of a new one.
    """
    parser = parser or PacketParser(header, strict)
    read = getattr(f, "read1", f.read)  # whatever is available: a pipe need not fill a block
    while not parser.ended:
        data = read(READ_BYTES)
        yield from parser.feed(data) if data else parser.close()
        if not data:
            return
