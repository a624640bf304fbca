"""The training corpus: decoding into the cache, corrupt files, splits, sampling, loaders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.listing import DataError, list_entries
from train.config import DataConfig
from train.data import CropSampler, load_index, split_clips, validation_clips
from train.prepare import DataWarning, build_cache, ensure_cache
from train_support import write_corpus


def test_cache_resamples_and_skips_a_corrupt_file_with_a_warning_naming_it(tmp_path):
    data = write_corpus(tmp_path / "data", speech=2, music=1)
    (data / "music" / "broken.wav").write_bytes(b"RIFF\x00\x00 definitely not audio")
    with pytest.warns(DataWarning, match="broken.wav"):
        n = build_cache(data, tmp_path / "cache", 8000, workers=1)
    assert n == 3
    clips = load_index(tmp_path / "cache")
    assert sorted(c.category for c in clips) == ["music", "speech", "speech"]
    assert all(c.length == 8000 for c in clips)  # 1 s at 8 and 16 kHz, both resampled to 8 kHz
    audio = np.load(tmp_path / "cache" / "audio.npy")
    assert audio.dtype == np.int16 and len(audio) == 24000


@pytest.mark.parametrize("kind", ["missing", "empty folder", "empty manifest"])
def test_bad_data_path_is_refused(tmp_path, kind):
    path = {"missing": tmp_path / "nope", "empty folder": tmp_path / "empty", "empty manifest": tmp_path / "m.tsv"}[kind]
    if kind == "empty folder":
        path.mkdir()
    if kind == "empty manifest":
        path.write_text("path\tcategory\n")
    with pytest.raises(DataError):
        ensure_cache(path, tmp_path / "cache", 8000, workers=1)
    assert not (tmp_path / "cache").exists()


def test_all_files_unreadable_is_an_error_not_an_empty_cache(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.wav").write_bytes(b"junk")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="none of the 1"):
        build_cache(tmp_path / "d", tmp_path / "cache", 8000, workers=1)


def test_manifest_columns_and_speaker_split(tmp_path):
    data = write_corpus(tmp_path / "data", speech=6, music=2)
    rows = ["path\tseconds\tcategory\tspeaker"]
    rows += [f"speech/s{i}.wav\t1\tspeech\tspk{i % 3}" for i in range(6)]
    rows += [f"music/m{i}.flac\t1\tmusic\t" for i in range(2)]
    (data / "manifest.tsv").write_text("\n".join(rows) + "\n")
    entries = list_entries(data / "manifest.tsv")
    assert [e.speaker for e in entries[:3]] == ["spk0", "spk1", "spk2"] and entries[-1].category == "music"
    build_cache(data / "manifest.tsv", tmp_path / "cache", 8000, workers=1)
    train, val = split_clips(load_index(tmp_path / "cache"), 0.5)
    assert train and val
    assert not {c.group for c in train} & {c.group for c in val}  # no speaker on both sides
    speakers = {c.group for c in train + val if c.category == "speech"}
    assert speakers == {"spk0", "spk1", "spk2"}


def test_a_manifest_without_a_header_keeps_its_first_file(tmp_path):
    data = write_corpus(tmp_path / "data", speech=3, music=0)
    names = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.wav"))
    (data / "bare.tsv").write_text("\n".join(names) + "\n")
    assert [e.path for e in list_entries(data / "bare.tsv")] == [data / n for n in names]
    (data / "headed.tsv").write_text("path\tcategory\n" + "".join(f"{n}\tspeech\n" for n in names))
    entries = list_entries(data / "headed.tsv")
    assert [e.path for e in entries] == [data / n for n in names] and {e.category for e in entries} == {"speech"}


def test_a_missing_file_is_skipped_with_its_reason(tmp_path):
    data = write_corpus(tmp_path / "data", speech=2, music=0)
    (data / "m.tsv").write_text("path\nspeech/s0.wav\nspeech/nowhere.wav\n")
    with pytest.warns(DataWarning, match=r"skipping .*nowhere\.wav: input file not found$"):
        assert build_cache(data / "m.tsv", tmp_path / "cache", 8000, workers=1) == 1


def constant_corpus(root):
    """Speech files hold +0.5, music files -0.5: a crop's sign tells its category."""
    for kind, value in (("speech", 0.5), ("music", -0.5)):
        (root / kind).mkdir(parents=True)
        for i in range(2):
            sf.write(str(root / kind / f"{i}.wav"), np.full(4000, value, np.float32), 8000)
    return root


def test_category_weights_gain_and_silence(tmp_path):
    build_cache(constant_corpus(tmp_path / "d"), tmp_path / "c", 8000, workers=1)
    cfg = DataConfig(batch_size=64, val_fraction=0.0, gain_db=(-6.0, 0.0), category_weights={"speech": 1.0, "music": 0.0})
    x = CropSampler(tmp_path / "c", cfg, 512, seed=0).batch(0)
    assert x.shape == (64, 1, 512) and bool((x > 0).all())
    peaks = x.abs().amax(dim=(1, 2))
    assert float(peaks.min()) >= 0.5 * 10 ** (-6 / 20) - 1e-3 and float(peaks.max()) <= 0.5 + 1e-3
    assert len(set(np.round(peaks.numpy(), 4))) > 10  # random gain per crop
    even = dataclasses.replace(cfg, category_weights={"speech": 1.0, "music": 1.0})
    signs = CropSampler(tmp_path / "c", even, 512, seed=0).batch(0).sign()
    assert 10 < int((signs > 0).all(-1).sum()) < 54


def test_near_silent_crops_are_redrawn(tmp_path):
    (tmp_path / "d").mkdir()
    x = np.zeros(16000, np.float32)
    x[8000:] = 0.3 * np.sin(np.arange(8000) * 0.3)  # first half silent
    sf.write(str(tmp_path / "d" / "a.wav"), x, 8000)
    build_cache(tmp_path / "d", tmp_path / "c", 8000, workers=1)
    crops = CropSampler(tmp_path / "c", DataConfig(batch_size=32, val_fraction=0.0), 400, seed=1).batch(3)
    rms = crops.pow(2).mean(dim=(1, 2)).sqrt()
    assert float(rms.min()) > 10 ** (-50 / 20)


def test_batches_depend_only_on_seed_rank_and_step_also_in_worker_processes(tmp_path):
    cache = tmp_path / "c"
    build_cache(write_corpus(tmp_path / "d"), cache, 8000, workers=1)
    cfg = DataConfig(batch_size=3, val_fraction=0.0, loader_workers=1)
    sampler = CropSampler(cache, cfg, 256, seed=7)
    assert torch.equal(sampler.batch(5), CropSampler(cache, cfg, 256, seed=7).batch(5))
    assert not torch.equal(sampler.batch(5), sampler.batch(6))
    assert not torch.equal(sampler.batch(5), CropSampler(cache, cfg, 256, seed=7, rank=1).batch(5))
    from_workers = list(sampler.loader(4, 8))
    assert all(torch.equal(b, sampler.batch(s)) for s, b in zip(range(4, 8), from_workers))


def test_validation_clips_are_fixed_and_cover_categories(tmp_path):
    cache = tmp_path / "c"
    build_cache(write_corpus(tmp_path / "d", speech=6, music=6), cache, 8000, workers=1)
    cfg = DataConfig(val_fraction=0.6, val_clips=2, val_seconds=0.5)  # holds out s1, s4 and m4
    clips = validation_clips(cache, cfg, 8000, 4)
    assert len(clips) == 2 and {c.category for c in clips} == {"speech", "music"}
    assert all(len(c.audio) == 4000 for c in clips)
    again = validation_clips(cache, cfg, 8000, 4)
    assert [c.name for c in clips] == [c.name for c in again]
    train, _ = split_clips(load_index(cache), cfg.val_fraction)
    assert not {c.name for c in clips} & {Path(c.path).stem for c in train}


def test_validation_clips_take_several_files_per_speaker_when_asked(tmp_path):
    corpus = write_corpus(tmp_path / "d", speech=6, music=0)
    rows = ["path\tcategory\tspeaker"] + [f"speech/s{i}.wav\tspeech\tspk{i % 2}" for i in range(6)]
    (corpus / "manifest.tsv").write_text("\n".join(rows) + "\n")
    cache = tmp_path / "c"
    build_cache(corpus / "manifest.tsv", cache, 8000, workers=1)
    cfg = DataConfig(val_fraction=0.999, val_clips=10, val_seconds=0.5)  # both speakers held out
    one = validation_clips(cache, cfg, 8000, 4)
    two = validation_clips(cache, cfg, 8000, 4, per_group=2)
    assert len(one) == 2 and len(two) == 4
    assert {c.name for c in one} < {c.name for c in two}
