"""Decode an audio corpus once into a flat int16 cache at the model's sample rate.

Decoding Ogg Opus costs far more CPU than a training step on a small model, so the
training loop reads random crops from this cache instead of decoding on the fly.

Cache layout (no pickle): ``audio.npy`` (int16, all files concatenated) and
``index.tsv`` (``path  category  speaker  start  length`` per file, in samples).
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.audio_io import read_audio, to_rate


@dataclass(frozen=True)
class Entry:
    """One audio file of a corpus."""

    path: Path
    category: str = "general"
    speaker: str = ""


AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif"}


def list_entries(data: Path) -> list[Entry]:
    """Entries of a folder (searched recursively) or of a ``manifest.tsv``.

    A manifest's first column is a path relative to the manifest; optional columns
    ``category`` and ``speaker`` are used for sampling weights and validation split.
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"data path not found: {data}")
    if data.is_file():
        with open(data, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            raise ValueError(f"empty manifest: {data}")
        header, body = rows[0], rows[1:]
        col = {name: i for i, name in enumerate(header)}
        entries = []
        for row in body:
            if not row or not row[0].strip():
                continue
            cat = row[col["category"]] if "category" in col and len(row) > col["category"] else "general"
            spk = row[col["speaker"]] if "speaker" in col and len(row) > col["speaker"] else ""
            entries.append(Entry(data.parent / row[0], cat or "general", spk))
    else:
        entries = [
            Entry(p, _guess_category(p.relative_to(data)), "")
            for p in sorted(data.rglob("*"))
            if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
        ]
    if not entries:
        raise ValueError(f"no audio files found in {data}")
    return entries


def _guess_category(rel: Path) -> str:
    top = rel.parts[0].lower() if len(rel.parts) > 1 else ""
    return top if top in {"speech", "music", "general"} else "general"


def _decode(args: tuple[str, int]) -> np.ndarray | None:
    path, rate = args
    try:
        wav, sr = read_audio(Path(path))
    except Exception as exc:  # corrupt files are skipped, never fatal
        warnings.warn(f"skipping unreadable file {path}: {exc}")
        return None
    mono = wav.mean(axis=0)
    mono = to_rate(mono, sr, rate)
    return np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16)


def build_cache(data: Path, out: Path, sample_rate: int, workers: int = 2) -> int:
    """Decode every entry of ``data`` into ``out``; returns the number of files kept."""
    entries = list_entries(data)
    out.mkdir(parents=True, exist_ok=True)
    chunks, rows, start = [], [], 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [(str(e.path), sample_rate) for e in entries]
        for entry, pcm in zip(entries, pool.map(_decode, jobs, chunksize=8)):
            if pcm is None or len(pcm) == 0:
                continue
            chunks.append(pcm)
            rows.append((str(entry.path), entry.category, entry.speaker, start, len(pcm)))
            start += len(pcm)
    np.save(out / "audio.tmp.npy", np.concatenate(chunks))
    (out / "audio.tmp.npy").rename(out / "audio.npy")
    with open(out / "index.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["path", "category", "speaker", "start", "length"])
        w.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--rate", type=int, default=24000)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    n = build_cache(a.data, a.out, a.rate, a.workers)
    print(f"cached {n} files in {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
