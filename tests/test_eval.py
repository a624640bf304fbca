"""``rvqcodec eval`` end to end on two tiny clips with a tiny model, and its error handling.

The Opus baseline is not optional here: without opus-tools these tests fail (CI installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from cli.main import app
from codec import evaluate, metrics, save_model
from codec.eval_results import METRICS, Clip
from codec.evaluate import list_clips

from conftest import SMALL, make_model, tone
from test_metrics import babble

torch.set_num_threads(1)
KBPS = (3.0, 6.0)  # Opus codes 6 kbps and up: one bitrate with both systems, one without Opus
ROW_KEYS = {"clip", "category", "system", "kbps", "actual_kbps", "lag_samples", "measured_lag_samples",
            "lag_correlation", *METRICS}


def make_clips(root: Path) -> Path:
    """A speech clip at 16 kHz and a music clip at 24 kHz, listed in a manifest."""
    (root / "speech").mkdir(parents=True)
    (root / "music").mkdir()
    sf.write(str(root / "speech" / "talk.wav"), babble(1.0, 16000), 16000)
    sf.write(str(root / "music" / "chirp.flac"), tone(1.0, 24000)[0], 24000)
    manifest = root / "manifest.tsv"
    manifest.write_text("path\tcategory\nspeech/talk.wav\tspeech\nmusic/chirp.flac\tmusic\n")
    return manifest


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "small.safetensors"
    save_model(make_model(SMALL), path)
    return path


def eval_cli(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


@pytest.fixture(scope="module")
def eval_run(clips: Path, model_file: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    result = eval_cli(str(clips), "--model", str(model_file), "--kbps", "3,6", "--baseline", "opus",
                      "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_eval_writes_every_file(eval_run: Path):
    plots = {f"{m}.png" for m in METRICS if m != "visqol" or metrics.visqol_available()}
    assert {p.name for p in eval_run.iterdir()} == {"results.json", "report.md", *plots}
    for name in plots:
        data = (eval_run / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 100_000


def test_results_json_has_every_clip_system_bitrate_and_column(eval_run: Path):
    res = json.loads((eval_run / "results.json").read_text())
    assert res["systems"] == ["rvqcodec", "opus"] and res["kbps"] == list(KBPS)
    assert res["model"]["name"] == SMALL.name
    cells = {(r["clip"], r["system"], r["kbps"]) for r in res["results"]}
    expected = {(c, "rvqcodec", k) for c in ("speech/talk.wav", "music/chirp.flac") for k in KBPS}
    expected |= {(c, "opus", 6.0) for c in ("speech/talk.wav", "music/chirp.flac")}
    assert cells == expected and len(res["results"]) == len(expected)
    for row in res["results"]:
        assert set(row) == ROW_KEYS
        speech = row["category"] == "speech"
        assert isinstance(row["si_sdr"], float) and row["mel_distance"] >= 0
        assert (row["pesq_wb"] is not None) == speech and (row["stoi"] is not None) == speech
        assert (row["visqol"] is not None) == metrics.visqol_available()
        # Actual bitrate from the file size: headers and framing cost a little over nominal.
        assert row["kbps"] <= row["actual_kbps"] < row["kbps"] * 1.6, row
    assert set(res["lag_ms"]) == {"rvqcodec", "opus"}
    assert set(res["lag_ms"]["opus"]) == {"6"}
    # opusdec removes the encoder's pre-skip, so Opus comes back aligned.
    assert abs(res["lag_ms"]["opus"]["6"]) < 0.5
    assert res["unavailable"] == ({} if metrics.visqol_available() else {"visqol": evaluate.VISQOL_MISSING})


def test_report_has_every_category_and_metric(eval_run: Path):
    report = (eval_run / "report.md").read_text()
    for text in ("## Delay", "## speech (1 clip)", "## music (1 clip)", "| rvqcodec | 3 |", "| opus | 6 |",
                 "SI-SDR", "mel distance", "PESQ-WB", "STOI", "ViSQOL", "](si_sdr.png)"):
        assert text in report, text
    assert "| opus | 3 |" not in report  # below what Opus can code


def test_eval_opus_beats_silence_and_noise(eval_run: Path):
    # A sanity check on the scoring itself: Opus at 6 kbps is far from noise on a chirp.
    res = json.loads((eval_run / "results.json").read_text())
    opus = [r for r in res["results"] if r["system"] == "opus"]
    assert all(r["si_sdr"] > 0 for r in opus)
    speech = next(r for r in opus if r["category"] == "speech")
    assert speech["stoi"] > 0.6 and speech["pesq_wb"] > 1.5


def test_eval_without_visqol_says_so(clips: Path, model_file: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(metrics, "visqol_available", lambda: False)
    music_only = clips.parent / "music.tsv"
    music_only.write_text("path\tcategory\nmusic/chirp.flac\tmusic\n")
    out = tmp_path / "out"
    evaluate.run(music_only, out, kbps=(6.0,), model=model_file)
    res = json.loads((out / "results.json").read_text())
    assert res["unavailable"] == {"visqol": evaluate.VISQOL_MISSING}
    assert all(r["visqol"] is None for r in res["results"])
    assert "not installed" in (out / "report.md").read_text()
    assert not (out / "visqol.png").exists()


def test_system_lag_is_the_median_over_the_clips():
    clips = [Clip(Path("-"), "-", "music", rate, 1, rate) for rate in (24000, 24000, 48000, 24000)]
    coded = [evaluate.Coded(clip, "x", 6.0, 6.0, Path("-"), lag, corr)
             for clip, (lag, corr) in zip(clips, [(24, 0.9), (48, 0.8), (96, 0.7), (120, 0.01)])]
    coded.append(evaluate.Coded(clips[0], "x", 6.0, 6.0, Path("-"), None, 0.01))  # follows nothing
    coded.append(evaluate.Coded(clips[0], "y", 6.0, 6.0, Path("-"), 300, 0.02))
    coded.append(evaluate.Coded(clips[0], "z", 6.0, 6.0, Path("-"), None, 0.02))
    # 1, 2, 2 and 5 ms (the fourth clip's from its loudness contour): the median, per system
    assert evaluate._system_lags(coded) == {"x": {6.0: 2.0}, "y": {6.0: 12.5}, "z": {6.0: None}}


def test_clip_lag_follows_the_loudness_contour_when_the_waveform_does_not():
    """A decoder that makes up its own phase: the waveform's cross-correlation peaks anywhere,
    the loudness contour's at the delay."""
    rate, delay = 16000, 64  # 4 ms
    rng = np.random.default_rng(0)
    n = 3 * rate
    envelope = np.repeat(rng.uniform(0.0, 1.0, n // 400) ** 3, 400)  # 25-ms syllables
    ref = (rng.standard_normal(n) * envelope).astype(np.float32)
    own_phase = rng.standard_normal(n) * np.concatenate([np.zeros(delay), envelope[:-delay]])
    lag, corr = evaluate.clip_lag(ref, own_phase.astype(np.float32), rate)
    assert corr < evaluate.MIN_LAG_CORRELATION and abs(lag - delay) <= 8, (lag, corr)
    noise = rng.standard_normal(n).astype(np.float32)  # follows neither waveform nor contour
    assert evaluate.clip_lag(ref, noise, rate)[0] is None
    faithful = np.concatenate([np.zeros(delay, np.float32), ref[:-delay]])  # the waveform itself
    assert evaluate.clip_lag(ref, faithful, rate) == (delay, pytest.approx(1.0, abs=1e-6))


def test_folder_listing_takes_category_from_top_folder(tmp_path: Path):
    make_clips(tmp_path)
    sf.write(str(tmp_path / "loose.wav"), tone(0.5, 8000)[0], 8000)
    found = {c.name: c.category for c in list_clips(tmp_path)}
    assert found == {"speech/talk.wav": "speech", "music/chirp.flac": "music", "loose.wav": "general"}


def _fails_with_one_line(result, *words: str) -> None:
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("args, words", [
    (["{missing}"], ["not found"]),
    (["{clips}", "--kbps", "5"], ["unsupported bitrate", "1.5, 3, 6, 12, 24"]),
    (["{clips}", "--kbps", "6,x"], ["--kbps"]),
    (["{clips}", "--baseline", "mp3"], ["baseline"]),
    (["{empty}"], ["no audio files"]),
    (["{short}"], ["too short", "0.100 s"]),
])
def test_user_errors(clips: Path, model_file: Path, tmp_path: Path, args, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "short" / "speech").mkdir(parents=True)
    sf.write(str(tmp_path / "short" / "speech" / "a.wav"), np.full(1600, 0.1, np.float32), 16000)
    names = {"missing": tmp_path / "nope", "clips": clips, "empty": tmp_path / "empty", "short": tmp_path / "short"}
    args = [a.format(**names) for a in args]
    out = tmp_path / "out"
    _fails_with_one_line(eval_cli(*args, "--model", str(model_file), "--out", str(out)), *words)
    assert not out.exists()


def test_missing_opus_tools_says_how_to_install(clips: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "out"
    _fails_with_one_line(eval_cli(str(clips), "--baseline", "opus", "--out", str(out)), "opus-tools")
    assert not out.exists()


def test_existing_results_need_force(eval_run: Path, clips: Path):
    before = (eval_run / "results.json").read_bytes()
    _fails_with_one_line(eval_cli(str(clips), "--out", str(eval_run)), "--force")
    assert (eval_run / "results.json").read_bytes() == before
