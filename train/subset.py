"""Copy a size-capped sample of a corpus: for moving training data where only so many bytes
fit (a lent GPU machine takes a 64 MiB working tree), or for a quick run on a laptop.

    python -m train.subset ../shared/corpus/manifest.tsv .gpu/data --max-mb 44

The cap is split between the categories by ``shares`` (of the bytes, not of the training
batches: ``data.category_weights`` still decides how often each category is drawn), and
within a category evenly between its sources (the manifest's ``source`` column, else each
file's folder), a source smaller than its part kept whole and its unused bytes shared by
the larger ones: a sample keeps every voice and every style, taking fewer files of each.
Files are copied unchanged (no re-encoding) to the same relative paths under ``out``, with a
``manifest.tsv`` holding the input's rows for them (all its columns, licences included).
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from codec.listing import DataError, list_entries

DEFAULT_SHARES = {"speech": 0.5, "music": 0.4, "general": 0.1}


@dataclass(frozen=True)
class Item:
    """One file of the corpus: its path relative to the corpus root, manifest row and size."""

    rel: Path
    row: dict[str, str]
    size: int


def read_corpus(data: Path) -> tuple[list[Item], Path, list[str]]:
    """The files of a folder or ``manifest.tsv``, the folder their paths are relative to,
    and the manifest columns to write (the input's own, or path / category / speaker)."""
    data = Path(data)
    entries = list_entries(data)
    root = data.parent if data.is_file() else data
    rows: dict[Path, dict[str, str]] = {}
    columns = ["path", "category", "speaker"]
    if data.is_file():
        with open(data, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            columns = list(reader.fieldnames or columns)
            for row in reader:
                if row.get(columns[0], "").strip():
                    rows[root / row[columns[0]]] = row
    items = []
    for e in entries:
        if not e.path.is_file():
            raise DataError(f"listed file not found: {e.path}")
        rel = e.path.relative_to(root)
        row = rows.get(e.path) or {"path": rel.as_posix(), "category": e.category, "speaker": e.speaker}
        row = {**row, "category": e.category}
        items.append(Item(rel, row, e.path.stat().st_size))
    return items, root, columns


def _source(item: Item) -> str:
    return item.row.get("source") or item.rel.parent.as_posix()


def split_evenly(budget: float, sizes: dict[str, int]) -> dict[str, float]:
    """Water-filling: each key gets an equal part of ``budget``, but no more than its size;
    what small keys leave is shared by the others."""
    parts: dict[str, float] = {}
    left = dict(sizes)
    while left:
        share = budget / len(left)
        small = {k: s for k, s in left.items() if s <= share}
        if not small:
            parts.update({k: share for k in left})
            break
        for k, s in small.items():
            parts[k] = s
            budget -= s
            del left[k]
    return parts


def choose(items: list[Item], max_bytes: int, shares: dict[str, float], seed: int = 0) -> list[Item]:
    """The sample: at most ``max_bytes`` in all, split by category ``shares`` (normalised over
    the categories present), then evenly by source; random files (``seed``) within each source."""
    if max_bytes <= 0:
        raise DataError("the size cap must be positive")
    groups: dict[str, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        groups[item.row["category"]][_source(item)].append(item)
    weights = {c: shares.get(c, 0.0) for c in groups}
    if sum(weights.values()) <= 0:
        raise DataError(f"no share given to any category of the corpus ({', '.join(sorted(groups))})")
    rng = random.Random(seed)
    total_weight = sum(weights.values())
    chosen: list[Item] = []
    for category in sorted(groups):
        budget = max_bytes * weights[category] / total_weight
        sources = groups[category]
        parts = split_evenly(budget, {s: sum(i.size for i in files) for s, files in sources.items()})
        for source in sorted(sources):
            files = sorted(sources[source], key=lambda i: i.rel.as_posix())
            rng.shuffle(files)
            used = 0
            for item in files:
                if used + item.size <= parts[source]:
                    chosen.append(item)
                    used += item.size
    return chosen


def write_subset(items: list[Item], root: Path, out: Path, columns: list[str]) -> None:
    """Copy ``items`` from ``root`` to ``out`` and write ``out/manifest.tsv`` (last, so a folder
    holding it is complete)."""
    out.mkdir(parents=True, exist_ok=True)
    for item in items:
        dest = out / item.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / item.rel, dest)
    tmp = out / "manifest.tsv.partial"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for item in items:
            writer.writerow({**item.row, columns[0]: item.rel.as_posix()})
    tmp.replace(out / "manifest.tsv")


def parse_shares(text: str) -> dict[str, float]:
    """``"speech=0.5,music=0.4"`` -> ``{"speech": 0.5, "music": 0.4}``."""
    try:
        shares = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError:
        raise DataError(f"shares must look like speech=0.5,music=0.4,general=0.1, not {text!r}") from None
    if any(v < 0 for v in shares.values()):
        raise DataError("shares must not be negative")
    return shares


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="corpus folder or manifest.tsv")
    ap.add_argument("out", type=Path, help="folder for the copies and their manifest.tsv")
    ap.add_argument("--max-mb", type=float, required=True, help="size cap of the copied files, in MB (10^6 bytes)")
    ap.add_argument("--shares", default=",".join(f"{k}={v}" for k, v in DEFAULT_SHARES.items()),
                    help="the cap's split between categories (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        if a.out.exists() and any(a.out.iterdir()):
            raise DataError(f"{a.out} is not empty: choose a new folder")
        items, root, columns = read_corpus(a.data)
        chosen = choose(items, int(a.max_mb * 1e6), parse_shares(a.shares), a.seed)
        if not chosen:
            raise DataError(f"no file fits in {a.max_mb} MB")
        write_subset(chosen, root, a.out, columns)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item in chosen:
        by_category[item.row["category"]][0] += 1
        by_category[item.row["category"]][1] += item.size
    summary = ", ".join(f"{c} {n} files {b / 1e6:.1f} MB" for c, (n, b) in sorted(by_category.items()))
    print(f"copied {len(chosen)} of {len(items)} files to {a.out}: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
