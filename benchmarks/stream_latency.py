"""Streaming latency and speed: algorithmic latency, per-frame compute, TCP loopback end to end.

    python benchmarks/stream_latency.py [--model rvq24k] [--kbps 6] [--seconds 5] [--pytorch] [--json PATH]

1. Algorithmic latency: how long an output sample waits after its input sample was captured,
   counting only the buffering (chunk, frame, packet, resamplers), not the compute: worst
   case (what a player must buffer) and mean, for a few set-ups.
2. Per-frame compute on one thread: one frame of audio at the model rate pushed through the
   encoder (-> one packet), that packet through the decoder; p50 / p99 / max. The target is
   p99 encode + p99 decode under a quarter of the frame duration.
3. End to end through TCP on 127.0.0.1: the input is paced at real time in 20 ms chunks and
   the latency of the oldest sample of each block the decoder outputs is measured.

Frames run on the native runtime (codec/native.py) where it builds; ``--pytorch`` measures
the PyTorch steps instead (as ``RVQCODEC_NATIVE=0`` does). The report names the runtime.

Prints a table and writes JSON (default ``reports/stream_latency.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch

from codec import load, native
from codec.endpoints import ByteReader, StopFlag
from codec.stream import StreamDecoder, StreamEncoder, lead_samples, live_packet_frames
from common import write_json

CHUNK_SECONDS = 0.02


def chirp(seconds: float, rate: int) -> np.ndarray:
    """A chirp plus noise ``[T, 1]``."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.shape)
    return x.astype(np.float32)[:, None]


def algorithmic_latency(models, kbps: float, rate: int, chunk: int, packet_frames: int, seconds: float) -> dict:
    """Worst and mean wait (ms) of output samples behind their input, buffering only."""
    audio = chirp(seconds, rate)
    waits, produced = [], 0
    with StreamEncoder(models[0], rate, 1, kbps, packet_frames) as enc, StreamDecoder(models[1]) as dec:
        dec.push(enc.header.encode())
        for i in range(0, len(audio) - chunk + 1, chunk):
            y = dec.push(enc.push(audio[i : i + chunk]))
            captured = i + chunk  # the chunk exists once its last sample is captured
            idx = np.arange(produced, produced + len(y))
            waits.extend(captured - (idx + 1))
            produced += len(y)
    waits = np.array(waits[len(waits) // 10 :]) / rate * 1000  # skip the start-up
    return {"rate": rate, "chunk_ms": chunk / rate * 1000, "packet_frames": packet_frames,
            "max_ms": float(waits.max()), "mean_ms": float(waits.mean())}


def stats_ms(times: list[float]) -> dict:
    a = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def per_frame_compute(models, kbps: float, frames: int, packet_frames: int = 1) -> dict:
    """Encode one packet's audio -> one packet, decode that packet; seconds per frame (time per
    packet / frames per packet), one thread. Every packet decodes to its own audio, less the
    model's output delay at the start (``lead_samples``, under one frame)."""
    hop, rate = models[0].hop_length, models[0].sample_rate
    step = hop * packet_frames
    audio = chirp((frames + 10 * packet_frames) * hop / rate + 1, rate)
    enc_t, dec_t = [], []
    with StreamEncoder(models[0], rate, 1, kbps, packet_frames) as enc, StreamDecoder(models[1]) as dec:
        dec.push(enc.header.encode())
        lead = lead_samples(models[1], enc.header)
        for i in range(frames // packet_frames + 10):
            t0 = time.perf_counter()
            packet = enc.push(audio[i * step : (i + 1) * step])
            t1 = time.perf_counter()
            out = dec.push(packet)
            t2 = time.perf_counter()
            assert len(out) == step - (lead if i == 0 else 0)
            if i >= 10:  # warm-up
                enc_t.append((t1 - t0) / packet_frames)
                dec_t.append((t2 - t1) / packet_frames)
    frame_ms = hop / rate * 1000
    enc_s, dec_s = stats_ms(enc_t), stats_ms(dec_t)
    total = enc_s["p99_ms"] + dec_s["p99_ms"]
    return {"packet_frames": packet_frames, "frame_ms": frame_ms, "frames": frames, "encode": enc_s,
            "decode": dec_s, "p99_sum_ms": total, "target_ms": frame_ms / 4, "meets_target": total < frame_ms / 4}


def tcp_end_to_end(models, kbps: float, seconds: float) -> dict:
    """Real-time paced encoder -> TCP 127.0.0.1 -> decoder, in two threads; latency (s) of the
    oldest sample of each output block after its capture."""
    model = models[0]
    rate = model.sample_rate
    audio, chunk = chirp(seconds, rate), round(CHUNK_SECONDS * rate)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    latencies: list[float] = []
    start: list[float] = []

    def decode() -> None:
        conn, _ = server.accept()
        with conn, StreamDecoder(models[1]) as dec:
            reader, produced = ByteReader(conn, StopFlag(), timeout=10), 0
            while data := reader.read():
                y = dec.push(data)
                if len(y):
                    latencies.append(time.monotonic() - (start[0] + (produced + 1) / rate))
                    produced += len(y)

    worker = threading.Thread(target=decode)
    worker.start()
    with socket.create_connection(server.getsockname(), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enc = StreamEncoder(model, rate, 1, kbps, live_packet_frames(model.frame_rate))
        with enc:
            sock.sendall(enc.header.encode())
            start.append(time.monotonic())
            for i in range(0, len(audio), chunk):
                StopFlag().sleep(start[0] + (i + chunk) / rate - time.monotonic())
                sock.sendall(enc.push(audio[i : i + chunk]))
            sock.sendall(enc.finish())
    worker.join(30)
    server.close()
    return {"seconds": seconds, "chunk_ms": CHUNK_SECONDS * 1000, **stats_ms(latencies[5:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="built-in name or .safetensors path (default: rvq24k)")
    p.add_argument("--kbps", type=float, default=6.0)
    p.add_argument("--seconds", type=float, default=5.0, help="audio per measurement")
    p.add_argument("--pytorch", action="store_true", help="run frames on the PyTorch steps, not the native runtime")
    p.add_argument("--json", type=Path, default=Path("reports/stream_latency.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.pytorch:
        os.environ["RVQCODEC_NATIVE"] = "0"
    runtime = "native" if native.library() is not None else "pytorch"
    models = load(args.model), load(args.model)  # a model streams one way at a time
    model = models[0]
    pf = live_packet_frames(model.frame_rate)
    sr, hop = model.sample_rate, model.hop_length
    setups = [(sr, round(CHUNK_SECONDS * sr), pf), (48000, round(CHUNK_SECONDS * 48000), pf), (sr, hop, 1)]
    algo = [algorithmic_latency(models, args.kbps, r, c, f, min(args.seconds, 2.0)) for r, c, f in setups]
    frames = int(args.seconds * model.frame_rate)
    compute = [per_frame_compute(models, args.kbps, frames, n) for n in sorted({1, pf})]
    e2e = tcp_end_to_end(models, args.kbps, args.seconds)
    report = {"model": model.cfg.name, "kbps": args.kbps, "threads": torch.get_num_threads(), "runtime": runtime,
              "algorithmic": algo, "compute": compute, "tcp_end_to_end": e2e}

    print(f"model {model.cfg.name}, {args.kbps:g} kbps, {compute[0]['frame_ms']:.2f} ms frames, 1 thread, {runtime} frames")
    print("\nalgorithmic latency (buffering only)      max ms   mean ms")
    for a in algo:
        print(f"  {a['rate']:>5} Hz, {a['chunk_ms']:5.1f} ms chunks, {a['packet_frames']} frame(s)/packet"
              f"  {a['max_ms']:7.1f}  {a['mean_ms']:7.1f}")
    print("\ncompute per frame             p50 ms   p99 ms   max ms")
    for c in compute:
        for k in ("encode", "decode"):
            s = c[k]
            print(f"  {k}, {c['packet_frames']} frame(s)/packet  {s['p50_ms']:6.2f}   {s['p99_ms']:6.2f}   {s['max_ms']:6.2f}")
        verdict = "meets" if c["meets_target"] else "MISSES"
        print(f"  p99 encode + decode {c['p99_sum_ms']:.2f} ms: {verdict} the target "
              f"(< {c['target_ms']:.2f} ms, a quarter frame)")
    print(f"\nTCP loopback end to end     p50 ms   p99 ms   max ms\n  {e2e['seconds']:g} s paced at real time"
          f"{'':7s}{e2e['p50_ms']:6.1f}   {e2e['p99_ms']:6.1f}   {e2e['max_ms']:6.1f}")
    print()
    write_json(args.json, report)


if __name__ == "__main__":
    main()
