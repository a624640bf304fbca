"""train.subset: a size-capped sample of a corpus that keeps every source."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from train.subset import main, split_evenly

# (category, source, files, bytes per file)
CORPUS = [("speech", "big voices", 10, 1000), ("speech", "small voices", 2, 500),
          ("music", "songs", 20, 1000), ("general", "sfx", 5, 200)]


def make_corpus(root: Path) -> Path:
    rows = []
    for category, source, n, size in CORPUS:
        for i in range(n):
            rel = f"{category}/{source.replace(' ', '_')}/f{i:02d}.opus"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(bytes([i]) * size)
            rows.append([rel, "1.0", category, source, "CC0", f"{source}-{i % 3}"])
    manifest = root / "manifest.tsv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["path", "seconds", "category", "source", "license", "speaker"])
        w.writerows(rows)
    return manifest


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_cap_split_by_category_then_source(tmp_path: Path) -> None:
    manifest = make_corpus(tmp_path / "corpus")
    out = tmp_path / "sample"
    assert main([str(manifest), str(out), "--max-mb", "0.012", "--shares", "speech=0.5,music=0.4,general=0.1"]) == 0
    rows = read_rows(out / "manifest.tsv")
    count = lambda source: sum(r["source"] == source for r in rows)  # noqa: E731
    # speech gets 6,000 bytes: the small source (1,000) whole, the big one the other 5,000;
    # music 4,800 (4 files of 1,000); general 1,200, more than its 5 x 200.
    assert (count("big voices"), count("small voices"), count("songs"), count("sfx")) == (5, 2, 4, 5)
    total = sum((out / r["path"]).stat().st_size for r in rows)
    assert total <= 12_000
    for r in rows:  # unchanged copies, every column kept
        assert (out / r["path"]).read_bytes() == (tmp_path / "corpus" / r["path"]).read_bytes()
        assert r["license"] == "CC0" and r["seconds"] == "1.0"
    assert sorted(p.name for p in out.iterdir()) == ["general", "manifest.tsv", "music", "speech"]


def test_seeded_choice(tmp_path: Path) -> None:
    manifest = make_corpus(tmp_path / "corpus")
    chosen = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        assert main([str(manifest), str(tmp_path / name), "--max-mb", "0.01", "--seed", str(seed)]) == 0
        chosen[name] = {r["path"] for r in read_rows(tmp_path / name / "manifest.tsv")}
    assert chosen["a"] == chosen["b"]
    assert chosen["a"] != chosen["c"]


def test_split_evenly() -> None:
    parts = split_evenly(100, {"a": 10, "b": 20, "c": 500, "d": 1000})
    assert parts["a"] == 10 and parts["b"] == 20  # small ones whole
    assert parts["c"] == parts["d"] == 35  # the rest shared evenly
    assert split_evenly(100, {"a": 10, "b": 20}) == {"a": 10, "b": 20}


@pytest.mark.parametrize("case", ["not empty", "missing data", "bad shares", "no share", "too small"])
def test_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    manifest = make_corpus(tmp_path / "corpus")
    out = tmp_path / "sample"
    args = [str(manifest), str(out), "--max-mb", "1"]
    if case == "not empty":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    elif case == "missing data":
        args[0] = str(tmp_path / "nowhere.tsv")
    elif case == "bad shares":
        args += ["--shares", "speech:1"]
    elif case == "no share":
        args += ["--shares", "noise=1"]
    else:
        args[3] = "0.0001"  # 100 bytes: smaller than every file
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (out / "manifest.tsv").exists()
