"""Is it the codes or the decoder? Two spectral decoders trained side by side from scratch,
the same way and for the same steps, one from a model's codes at a bitrate, one from the
original's log-mel spectrum (80 bands a frame, far more than the codes' bits); then both
scored on held-out speech and music.

    python benchmarks/feature_ceiling.py RUN/codes ~/.cache/rvqcodec/corpus24k \\
        --minutes 50 [--model rvq24k] [--kbps 6] [--out ~/.cache/rvqcodec/ceiling]

RUN/codes is a code cache (``data.code_crops`` of a frozen-encoder run: ``audio.npy`` and
``codes.npy``). Each decoder trains in its own process on one thread for ``--minutes``, with
phase 6's losses (mel 1, waveform L1 2, band envelopes 10, linear STFT 1), batch 16 x 0.96 s,
AdamW 1e-3, bf16. If the log-mel decoder scores far higher, what the codes carry limits the
model, not what the decoder can make of it. A third row feeds the log-mel decoder its input
through a residual VQ at the codes' bitrate (k-means codebooks of 1024 entries fitted on 400
training crops; the decoder never trained on quantized input): what a codec that codes the
log-mel spectrum itself could reach. No postfilter on any. ``--only score`` scores decoders
trained before; ``--only trained-rvq --minutes M [--threads 2]`` trains the log-mel decoder on
its quantized input (from where it stopped, saved every 500 steps), which ``score`` then
scores as a fourth row.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from common import print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codec import load  # noqa: E402
from codec.errors import CodecError  # noqa: E402
from codec.kmeans import nearest  # noqa: E402
from codec.logmel import LogMelEncoder  # noqa: E402
from codec.metrics import score_clip  # noqa: E402
from codec.spectral import SpectralDecoder  # noqa: E402
from train.config import DataConfig  # noqa: E402
from train.data import validation_clips  # noqa: E402
from train.fit_codebooks import fit_rvq  # noqa: E402
from train.losses import EnvelopeCorrelationLoss, MultiResolutionSTFTLoss, MultiScaleMelLoss  # noqa: E402

N_MELS, BATCH, FRAMES = 80, 16, 72


def decoder(cfg, in_dim: int) -> SpectralDecoder:
    """A spectral decoder of the model's size (``cfg``: its CodecConfig) on ``in_dim`` inputs."""
    return SpectralDecoder(in_dim, cfg.hop_length, cfg.decoder_dim, 4 * cfg.decoder_dim, cfg.decoder_layers)


def read_decoder(dec: SpectralDecoder, path: Path) -> int:
    """Load ``path`` (written by :func:`train`) into ``dec``; returns its step count."""
    with safe_open(path, "pt") as f:
        dec.load_state_dict({k: f.get_tensor(k) for k in f.keys()})
        return int(f.metadata()["steps"])


def quantized(features: Tensor, books: list[Tensor]) -> Tensor:
    """Log-mel ``features [B, N_MELS, F]`` through the RVQ ``books``."""
    b, d, f = features.shape
    return rvq_round_trip(features.transpose(1, 2).reshape(-1, d), books).view(b, f, d).transpose(1, 2)


def train(args: argparse.Namespace, kind: str) -> None:
    """Train one decoder (``kind``: codes, logmel or trained-rvq) for ``args.minutes`` into
    ``args.out / f"{kind}.safetensors"``; a resumed trained-rvq run restarts its optimizer
    with a short warm-up and draws new crops."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load(args.model).eval()
    hop, rate = model.hop_length, model.sample_rate
    n_q = model.n_q_for(args.kbps)
    audio = np.load(args.codes / "audio.npy", mmap_mode="r")
    codes = np.load(args.codes / "codes.npy", mmap_mode="r")
    cfg = model.cfg
    dec = decoder(cfg, cfg.latent_dim if kind == "codes" else N_MELS)
    features = LogMelEncoder(rate, hop, N_MELS)
    books, first, peak = None, 0, 1e-3
    if kind == "trained-rvq":  # continues itself, else starts from the log-mel decoder
        books = training_books(args, features, n_q)
        start_from = args.out / ("trained-rvq.safetensors" if (args.out / "trained-rvq.safetensors").is_file() else "logmel.safetensors")
        if not start_from.is_file():
            raise CodecError(f"{start_from} is not there: train the log-mel decoder first")
        steps = read_decoder(dec, start_from)
        first = steps if start_from.name.startswith("trained") else 0
        peak = 3e-4
    mel, stft, env = MultiScaleMelLoss(rate), MultiResolutionSTFTLoss(), EnvelopeCorrelationLoss(rate)
    opt = torch.optim.AdamW(dec.parameters(), lr=1e-3, betas=(0.8, 0.99), weight_decay=0.01)
    seed = 1 if kind == "logmel" else 2
    rng = np.random.default_rng(seed if first == 0 else (seed, first))  # a resumed run: other crops
    end, step = time.time() + args.minutes * 60, first
    while time.time() < end:
        idx = rng.integers(0, audio.shape[0], BATCH)
        start = rng.integers(0, codes.shape[-1] - FRAMES, BATCH)
        x = torch.stack([torch.from_numpy(audio[i, s * hop:(s + FRAMES) * hop].astype(np.float32) / 32767) for i, s in zip(idx, start)])[:, None]
        with torch.no_grad():
            if kind == "logmel":
                cond = features(x)
            elif kind == "trained-rvq":
                cond = quantized(features(x), books)
            else:
                c = torch.stack([torch.from_numpy(codes[i, :, s:s + FRAMES].astype(np.int64)) for i, s in zip(idx, start)])
                cond = model.quantizer.decode(c[:, :n_q])
        for g in opt.param_groups:
            g["lr"] = peak * min(1.0, (step - first + 1) / 200) * 0.5 ** (step / 4000 if kind != "trained-rvq" else step / 16000)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = dec(cond).float()
        loss = mel(y, x) + 2 * (y - x).abs().mean() + 10 * env(y, x) + stft(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 10.0)
        opt.step()
        step += 1
        if step % 250 == 0:
            print(f"{kind} step {step} loss {loss.item():.3f}", flush=True)
        if step % 500 == 0 or time.time() >= end:
            args.out.mkdir(parents=True, exist_ok=True)
            part = args.out / f"{kind}.part.safetensors"
            save_file(dec.state_dict(), part, metadata={"steps": str(step)})
            part.replace(args.out / f"{kind}.safetensors")


def training_books(args: argparse.Namespace, features: LogMelEncoder, levels: int) -> list[Tensor]:
    """The log-mel RVQ's codebooks: fitted on 400 training crops once, then read from
    ``args.out / "rvq.safetensors"``, so that training and scoring use the same."""
    path = args.out / "rvq.safetensors"
    if path.is_file():
        with safe_open(path, "pt") as f:
            return [f.get_tensor(f"level{i}") for i in range(levels)]
    audio = np.load(args.codes / "audio.npy", mmap_mode="r")
    crops = torch.from_numpy(np.asarray(audio[:: max(1, audio.shape[0] // 400)], dtype=np.float32) / 32767)[:, None]
    with torch.no_grad():
        frames = torch.cat([features(part) for part in crops.split(50)]).transpose(1, 2).reshape(-1, N_MELS)
    books = list(fit_rvq(frames, levels, 1024, 8, torch.Generator().manual_seed(0), log=lambda _: None))
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({f"level{i}": b.contiguous() for i, b in enumerate(books)}, path)
    return books


def rvq_round_trip(x: Tensor, books: list[Tensor]) -> Tensor:
    """``x [N, D]`` quantized with ``books`` (residual, nearest entry per level)."""
    out, residual = torch.zeros_like(x), x.clone()
    for book in books:
        q = book[nearest(residual, book)]
        out, residual = out + q, residual - q
    return out


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    model = load(args.model).eval()
    hop, rate, cfg = model.hop_length, model.sample_rate, model.cfg
    data = dataclasses.replace(DataConfig(), val_clips=40, val_seconds=6.0)
    clips = [c for c in validation_clips(args.cache.expanduser(), data, rate, hop, 4) if c.category in ("speech", "music")]
    features = LogMelEncoder(rate, hop, N_MELS)
    # The log-mel decoder's input through a residual VQ at the codes' bitrate, fitted by
    # k-means on 400 training crops (the decoder is not trained on quantized input).
    books = training_books(args, features, model.n_q_for(args.kbps))
    results, steps = {}, {}
    # logmel-rvq: the log-mel decoder on quantized input; trained-rvq: a decoder trained on it
    kinds = ("codes", "logmel", "logmel-rvq", "trained-rvq")
    for kind in kinds if (args.out / "trained-rvq.safetensors").is_file() else kinds[:3]:
        trained = "logmel" if kind.startswith("logmel") else kind
        dec = decoder(cfg, cfg.latent_dim if trained == "codes" else N_MELS).eval()
        steps[kind] = read_decoder(dec, args.out / f"{trained}.safetensors")
        rows: dict[str, list] = {}
        for clip in clips:
            x = torch.from_numpy(clip.audio)[None, None]
            if kind == "logmel":
                cond = features(x)
            elif kind in ("logmel-rvq", "trained-rvq"):
                cond = quantized(features(x), books)
            else:
                c = model.encode(x, kbps=args.kbps, levels_only=True)[:, 0]  # [1, n_q, F]
                cond = model.quantizer.decode(c)
            y = dec(cond)[0, 0, :x.shape[-1]].numpy()
            names = ("pesq_wb", "stoi", "visqol", "mel_distance") if clip.category == "speech" else ("visqol", "mel_distance")
            rows.setdefault(clip.category, []).append(score_clip(clip.audio, y, rate, clip.category, names))
        results[kind] = {cat: {m: float(np.mean([r[m] for r in rs if r.get(m) is not None])) for m in rs[0]}
                         for cat, rs in rows.items()}
    print_table(["decoder from", "steps", "speech PESQ", "STOI", "ViSQOL", "mel", "music ViSQOL", "music mel"],
                [[kind, steps[kind], *(f"{r['speech'][m]:.3f}" for m in ("pesq_wb", "stoi", "visqol", "mel_distance")),
                  *(f"{r['music'][m]:.3f}" for m in ("visqol", "mel_distance"))] for kind, r in results.items()])
    write_json(args.json, {"model": args.model, "kbps": args.kbps, "minutes": args.minutes, "steps": steps, "results": results})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("codes", type=Path, help="a code cache folder (audio.npy, codes.npy)")
    p.add_argument("cache", type=Path, help="the corpus cache, for the held-out excerpts")
    p.add_argument("--model", default="rvq24k", help="the model whose codes (and codebooks) the cache holds")
    p.add_argument("--kbps", type=float, default=6.0)
    p.add_argument("--minutes", type=float, default=50.0, help="training time of each decoder")
    p.add_argument("--threads", type=int, default=1, help="threads of each training process")
    p.add_argument("--out", type=Path, default=Path("~/.cache/rvqcodec/ceiling").expanduser())
    p.add_argument("--json", type=Path, default=Path("reports/feature_ceiling.json"))
    p.add_argument("--only", choices=("codes", "logmel", "trained-rvq", "score"),
                   help="train one decoder only (trained-rvq: on the quantized log-mel, from the log-mel "
                        "decoder or where it stopped), or (score) score those trained before")
    args = p.parse_args()
    if not (args.codes / "codes.npy").is_file() or not (args.cache.expanduser() / "index.tsv").is_file():
        raise CodecError("expected a code cache folder (codes.npy) and a prepared corpus cache (index.tsv)")
    if args.only in ("codes", "logmel", "trained-rvq"):
        return train(args, args.only)
    if args.only != "score":
        me = [sys.executable, __file__, *sys.argv[1:]]
        procs = [subprocess.Popen([*me, "--only", kind]) for kind in ("codes", "logmel")]
        if any(proc.wait() for proc in procs):
            raise CodecError("a training process failed")
    evaluate(args)


if __name__ == "__main__":
    try:
        main()
    except CodecError as e:
        sys.exit(f"feature_ceiling: {e}")
