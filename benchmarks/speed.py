"""Encode/decode speed and peak memory: rvqcodec's default model vs EnCodec 24 kHz.

Each (system, threads) pair runs in its own subprocess so that peak RSS and thread
settings are measured in isolation. EnCodec's architecture is built with random weights
(only speed is compared); its package imports torchaudio at module level, so a stub module
is put on ``sys.path`` (install it with ``pip install --no-deps encodec einops``).

    python benchmarks/speed.py [--seconds 30] [--repeats 3] [--kbps 6] [--json reports/speed.json]

``--kbps``: rvqcodec's bitrate (EnCodec stays at 6 kbps); from 12 kbps the default codes the
low band too (codec/lowband.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_table, write_json

ROOT = Path(__file__).resolve().parents[1]


def load_encodec():
    """EnCodec 24 kHz (random weights) with torchaudio stubbed out."""
    stub = Path(tempfile.mkdtemp()) / "torchaudio"
    stub.mkdir()
    (stub / "__init__.py").write_text("import types\ntransforms = types.SimpleNamespace()\n"
                                      "functional = types.SimpleNamespace()\n")
    sys.path.insert(0, str(stub.parent))
    from encodec import EncodecModel

    model = EncodecModel.encodec_model_24khz(pretrained=False).eval()
    model.set_target_bandwidth(6.0)
    return model


def measure(system: str, threads: int, seconds: float, repeats: int, kbps: float = 6.0) -> dict:
    """Runs inside the worker subprocess."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    wav = torch.randn(1, 1, int(24000 * seconds)) * 0.1
    if system == "rvqcodec":
        sys.path.insert(0, str(ROOT))
        from codec import load

        model = load()
        params = sum(p.numel() for p in model.parameters())
        encode = lambda: model.encode(wav, kbps=kbps)  # noqa: E731
        decode = lambda c: model.decode(c)  # noqa: E731
    else:
        model = load_encodec()
        params = sum(p.numel() for p in model.parameters())
        encode = lambda: model.encode(wav)  # noqa: E731
        decode = lambda c: model.decode(c)  # noqa: E731
    with torch.inference_mode():
        codes = encode()  # warm-up
        decode(codes)
        t_enc, t_dec = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            codes = encode()
            t1 = time.perf_counter()
            decode(codes)
            t_dec.append(time.perf_counter() - t1)
            t_enc.append(t1 - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "system": system, "threads": threads, "params_m": params / 1e6, "seconds": seconds, "kbps": kbps if system == "rvqcodec" else 6.0,
        "encode_rtf": min(t_enc) / seconds, "decode_rtf": min(t_dec) / seconds,
        "encode_x_realtime": seconds / min(t_enc), "decode_x_realtime": seconds / min(t_dec),
        "peak_rss_mb": rss_mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kbps", type=float, default=6.0, help="rvqcodec's bitrate")
    ap.add_argument("--json", type=Path, default=ROOT / "reports" / "speed.json")
    ap.add_argument("--worker", nargs=2, metavar=("SYSTEM", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(measure(a.worker[0], int(a.worker[1]), a.seconds, a.repeats, a.kbps)))
        return
    rows = []
    for threads in (1, 2):
        for system in ("rvqcodec", "encodec"):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", system, str(threads), "--seconds", str(a.seconds),
                 "--repeats", str(a.repeats), "--kbps", str(a.kbps)], capture_output=True, text=True, check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{a.seconds:g}-s clip at 24 kHz, rvqcodec at {a.kbps:g} kbps, EnCodec at 6; RTF = compute time / audio duration (lower is faster)")
    print_table(
        ["system", "params (M)", "threads", "encode RTF", "decode RTF", "enc+dec RTF", "peak RSS (MB)"],
        [[r["system"], f"{r['params_m']:.1f}", r["threads"], f"{r['encode_rtf']:.4f}", f"{r['decode_rtf']:.4f}",
          f"{r['encode_rtf'] + r['decode_rtf']:.4f}", f"{r['peak_rss_mb']:.0f}"] for r in rows],
    )
    write_json(a.json, rows)


if __name__ == "__main__":
    main()
