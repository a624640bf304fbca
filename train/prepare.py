"""Decode an audio corpus once into a flat int16 cache at the model's sample rate.

Decoding Ogg Opus costs far more CPU than a training step on a small model, so the
training loop reads random crops from this cache instead of decoding on the fly; the
decoding runs in a pool of worker processes.

Cache layout (no pickle): ``audio.npy`` (int16, all files concatenated), ``index.tsv``
(``path  category  speaker  start  length`` per file: path relative to the corpus root,
start and length in samples) and ``source.json``
(where it came from and at which rate). ``index.tsv`` is written last: a folder holding
it is a complete cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from codec.audio_io import read_audio, to_rate
from codec.listing import DataError, list_entries


class DataWarning(UserWarning):
    """A file of the corpus that was skipped (unreadable, corrupt, empty)."""


def _decode(args: tuple[str, int]) -> tuple[np.ndarray | None, str]:
    """Worker: ``(path, rate)`` -> (mono int16 at ``rate`` or None, why it was skipped)."""
    path, rate = args
    try:
        wav, sr = read_audio(Path(path))
        mono = to_rate(wav.mean(axis=0), sr, rate)
    except Exception as exc:  # corrupt files are skipped, never fatal
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, ([part for part in text.split(": ") if part != path] or [text])[-1]  # the reason; the caller names the file
    if not np.isfinite(mono).all():
        return None, "contains NaN or infinite samples"
    return np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16), ""


def build_cache(data: Path, out: Path, sample_rate: int, workers: int = 2) -> int:
    """Decode every entry of ``data`` into ``out``; returns the number of files kept.

    Unreadable files are skipped with a :class:`DataWarning` naming them.
    """
    entries = list_entries(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "audio.tmp.raw"
    rows, start = [], 0
    with open(raw, "wb") as sink, ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        jobs = [(str(e.path), sample_rate) for e in entries]
        for entry, (pcm, why) in zip(entries, pool.map(_decode, jobs, chunksize=4)):
            if pcm is None or len(pcm) == 0:
                warnings.warn(f"skipping {entry.path}: {why or 'no audio samples'}", DataWarning, stacklevel=2)
                continue
            sink.write(pcm.tobytes())
            rows.append((_relative(entry.path, data), entry.category, entry.speaker, start, len(pcm)))
            start += len(pcm)
    if not rows:
        raw.unlink()
        raise DataError(f"none of the {len(entries)} audio files in {data} could be read")
    _raw_to_npy(raw, out / "audio.npy", start)
    (out / "source.json").write_text(json.dumps({"data": str(Path(data).resolve()), "sample_rate": sample_rate}))
    with open(out / "index.tmp.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["path", "category", "speaker", "start", "length"])
        w.writerows(rows)
    os.replace(out / "index.tmp.tsv", out / "index.tsv")
    return len(rows)


def _relative(path: Path, data: Path) -> str:
    """A file's path relative to the corpus root (the folder, or the manifest's folder): the
    validation split hashes it, and must not change when the corpus moves."""
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _raw_to_npy(raw: Path, npy: Path, n: int) -> None:
    """Turn raw int16 samples into a ``.npy`` in place: prepend the header, no second copy
    in memory (a large corpus need not fit in RAM)."""
    header = raw.with_suffix(".hdr")
    with open(header, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i2", "fortran_order": False, "shape": (n,)})
        with open(raw, "rb") as src:
            shutil.copyfileobj(src, f, length=1 << 24)
    raw.unlink()
    os.replace(header, npy)


def is_cache(path: Path) -> bool:
    return (Path(path) / "index.tsv").is_file() and (Path(path) / "audio.npy").is_file()


def ensure_cache(data: Path, cache: Path, sample_rate: int, workers: int = 2, build: bool = True) -> Path:
    """The cache to train on: ``data`` itself if it is one, else ``cache`` (built if missing).

    With ``build=False`` (the other processes of a node under DDP) wait for another
    process to finish building it instead.
    """
    data, cache = Path(data), Path(cache)
    if is_cache(data):
        check_rate(data, sample_rate)
        return data
    if is_cache(cache):
        _check_source(cache, data, sample_rate)
        return cache
    list_entries(data)  # refuse a missing or empty data path before anything else
    if not build:
        while not is_cache(cache):
            time.sleep(1.0)
        return cache
    # Built under a private name, then renamed: a reader never sees half a cache, and two
    # builders (one per node on a shared filesystem) cannot write into the same files.
    tmp = cache.with_name(f".{cache.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        n = build_cache(data, tmp, sample_rate, workers)
        try:
            os.rename(tmp, cache)
        except OSError:
            if not is_cache(cache):
                raise DataError(f"cache folder {cache} exists and is not a cache: remove it or choose another") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cached {n} files of {data} in {cache}", file=sys.stderr)
    return cache


def _source(cache: Path) -> dict:
    path = cache / "source.json"
    return json.loads(path.read_text()) if path.exists() else {}  # older caches: unknown


def check_rate(cache: Path, sample_rate: int) -> None:
    rate = _source(cache).get("sample_rate", sample_rate)
    if rate != sample_rate:
        raise DataError(f"cache {cache} holds audio at {rate} Hz, the model runs at {sample_rate} Hz")


def _check_source(cache: Path, data: Path, sample_rate: int) -> None:
    check_rate(cache, sample_rate)
    built_from = _source(cache).get("data")
    if built_from and built_from != str(data.resolve()):
        raise DataError(f"cache {cache} was built from {built_from}, not {data}: choose another cache folder")


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
