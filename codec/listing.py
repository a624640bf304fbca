"""Audio file listings: a folder (searched recursively) or a ``manifest.tsv``.

Shared by training (the corpus) and evaluation (the clips to score), so both see the same
files and the same categories.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .errors import CodecError


class DataError(CodecError):
    """A data path or cache that cannot be trained on."""


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
    ``category`` and ``speaker``, named in a header row, are used for sampling weights and
    validation split. A first row whose first field names a file is an entry, not a header.
    In a folder, a top-level sub-folder named speech, music or general sets the category.
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"data path not found: {data}")
    entries = _read_manifest(data) if data.is_file() else [
        Entry(p, _guess_category(p.relative_to(data)), "")
        for p in sorted(data.rglob("*"))
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
    ]
    if not entries:
        raise DataError(f"no audio files found in {data}")
    return entries


def _read_manifest(path: Path) -> list[Entry]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error):
        raise DataError(f"{path} is neither a folder nor a tab-separated manifest") from None
    if not rows:
        return []
    headed = not (rows[0] and rows[0][0].strip() and (path.parent / rows[0][0]).is_file())
    col = {name: i for i, name in enumerate(rows[0])} if headed else {}

    def column(row: list[str], name: str) -> str:
        return row[col[name]] if name in col and len(row) > col[name] else ""

    return [
        Entry(path.parent / row[0], column(row, "category") or "general", column(row, "speaker"))
        for row in rows[headed:]
        if row and row[0].strip()
    ]


def _guess_category(rel: Path) -> str:
    top = rel.parts[0].lower() if len(rel.parts) > 1 else ""
    return top if top in {"speech", "music", "general"} else "general"
