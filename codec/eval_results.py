"""Evaluation results: their types, and writing them as ``results.json`` (every score),
``report.md`` (means per category) and one rate-distortion plot per metric (``<metric>.png``,
every system on the same axes). Producing them is :mod:`codec.evaluate`'s job."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

FORMAT = "rvqcodec-eval-1"
METRICS = ("si_sdr", "mel_distance", "pesq_wb", "stoi", "visqol")
SPEECH_ONLY = frozenset({"pesq_wb", "stoi"})
LABELS = {
    "si_sdr": ("SI-SDR (dB)", "higher is better"),
    "mel_distance": ("mel distance", "lower is better"),
    "pesq_wb": ("PESQ-WB", "higher is better; speech only, at 16 kHz"),
    "stoi": ("STOI", "higher is better; speech only, at 16 kHz"),
    "visqol": ("ViSQOL", "higher is better; speech mode at 16 kHz for speech, audio mode at 48 kHz otherwise"),
}
CATEGORY_ORDER = ("speech", "music", "general")


@dataclass(frozen=True)
class Clip:
    """One input file; ``name`` is its path relative to the input folder or manifest."""

    path: Path
    name: str
    category: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class Row:
    """Scores of one clip, one system, one bitrate (None: not applicable or not available)."""

    clip: Clip
    system: str
    kbps: float
    actual_kbps: float  # coded file size over duration, all channels
    lag_samples: int  # the delay undone before scoring: the system's, not the clip's own
    measured_lag_samples: int | None  # this clip's own estimate
    lag_correlation: float  # waveform correlation at the waveform's own best lag (below the threshold, the lag is the contour's)
    scores: dict[str, float | None]


@dataclass(frozen=True)
class EvalResult:
    input: str
    model: str
    weights: str  # first 8 bytes of the weights fingerprint, hex (as in .rvq headers)
    model_rate: int
    kbps: tuple[float, ...]
    systems: tuple[str, ...]
    clips: tuple[Clip, ...]
    lag_ms: dict[str, dict[float, float | None]]  # system -> kbps -> delay; None: not measurable
    lag_search_ms: float  # delays were searched within +-this
    min_lag_correlation: float  # clips correlating less are aligned by their loudness contour
    rows: tuple[Row, ...]
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> why it is missing


def to_json(r: EvalResult) -> dict:
    return {
        "format": FORMAT,
        "input": r.input,
        "model": {"name": r.model, "weights": r.weights, "sample_rate": r.model_rate},
        "kbps": list(r.kbps),
        "systems": list(r.systems),
        "metrics": {m: f"{LABELS[m][0]}, {LABELS[m][1]}" for m in METRICS},
        "unavailable": r.unavailable,
        "lag_ms": {s: {f"{k:g}": None if v is None else round(v, 3) for k, v in by_k.items()}
                   for s, by_k in r.lag_ms.items()},
        "lag_search_ms": r.lag_search_ms,
        "min_lag_correlation": r.min_lag_correlation,
        "clips": [{"clip": c.name, "category": c.category, "sample_rate": c.sample_rate,
                   "channels": c.channels, "seconds": round(c.seconds, 3)} for c in r.clips],
        "results": [
            {"clip": row.clip.name, "category": row.clip.category, "system": row.system, "kbps": row.kbps,
             "actual_kbps": round(row.actual_kbps, 4), "lag_samples": row.lag_samples,
             "measured_lag_samples": row.measured_lag_samples,
             "lag_correlation": round(row.lag_correlation, 4),
             **{m: None if row.scores[m] is None else round(row.scores[m], 4) for m in METRICS}}
            for row in r.rows
        ],
    }


def categories(r: EvalResult) -> list[str]:
    present = {c.category for c in r.clips}
    return [c for c in CATEGORY_ORDER if c in present] + sorted(present - set(CATEGORY_ORDER))


def metrics_for(category: str) -> list[str]:
    """The metric columns of a category's table (PESQ and STOI are defined on speech only)."""
    return [m for m in METRICS if category == "speech" or m not in SPEECH_ONLY]


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def means(r: EvalResult, category: str, system: str, kbps: float) -> dict[str, float | None] | None:
    """Mean actual kbps and scores of one table cell group; None when the system skipped kbps."""
    rows = [x for x in r.rows if (x.clip.category, x.system, x.kbps) == (category, system, kbps)]
    if not rows:
        return None
    out = {"actual_kbps": _mean([x.actual_kbps for x in rows])}
    out.update({m: _mean([x.scores[m] for x in rows]) for m in METRICS})
    return out


def _cell(metric: str, value: float | None, r: EvalResult) -> str:
    if metric in r.unavailable:
        return "not installed"
    if value is None:
        return "n/a"
    return f"{value:.2f}" if metric in ("si_sdr", "mel_distance", "actual_kbps") else f"{value:.3f}"


def report_markdown(r: EvalResult, plots: list[str]) -> str:
    counts = {c: sum(1 for x in r.clips if x.category == c) for c in categories(r)}
    lines = [
        "# rvqcodec evaluation", "",
        f"- input: `{r.input}`, {len(r.clips)} clips ("
        + ", ".join(f"{n} {c}" for c, n in counts.items()) + ")",
        f"- model: `{r.model}` (weights `{r.weights}`, {r.model_rate} Hz)",
        f"- systems: {', '.join(r.systems)}; bitrates {', '.join(f'{k:g}' for k in r.kbps)} kbps"
        + (" (Opus from 6 kbps up, hard CBR)" if "opus" in r.systems else ""),
        "- actual kbps: coded file size (headers and framing included) over duration",
        "- scores: means over clips, outputs sample-aligned with the delays below",
    ]
    lines += [f"- {m}: {why}" for m, why in r.unavailable.items()]
    lines += ["", "## Delay (ms, measured by cross-correlation of the waveform, or of the loudness contour where the waveform does not follow; removed before scoring)", "",
              "| system | " + " | ".join(f"{k:g} kbps" for k in r.kbps) + " |",
              "|---|" + "---:|" * len(r.kbps)]
    lags = r.lag_ms
    for s in r.systems:
        cells = ["—" if k not in lags.get(s, {}) else "not measurable" if lags[s][k] is None
                 else f"{lags[s][k]:.2f}" for k in r.kbps]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if any(v is None for by_k in lags.values() for v in by_k.values()):
        lines += ["", f"Not measurable: on no clip does the decoded waveform correlate with the original "
                      f"(correlation < {r.min_lag_correlation:g} at the best lag within "
                      f"±{r.lag_search_ms:g} ms), nor its loudness contour with the original's, "
                      f"so that output is scored unshifted."]
    for cat in categories(r):
        cols = metrics_for(cat)
        lines += ["", f"## {cat} ({counts[cat]} clip{'s' if counts[cat] != 1 else ''})", "",
                  "| system | kbps | actual kbps | " + " | ".join(
                      f"{LABELS[m][0]} {'↓' if m == 'mel_distance' else '↑'}" for m in cols) + " |",
                  "|---|---:|---:|" + "---:|" * len(cols)]
        for s in r.systems:
            for k in r.kbps:
                m = means(r, cat, s, k)
                if m is not None:
                    lines.append(f"| {s} | {k:g} | {_cell('actual_kbps', m['actual_kbps'], r)} | "
                                 + " | ".join(_cell(c, m[c], r) for c in cols) + " |")
    if plots:
        lines += ["", "## Rate-distortion plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plot(r: EvalResult, metric: str, path: Path) -> bool:
    """One panel per category, mean score against mean actual kbps per system.

    False (nothing written) when the metric has no score at all.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [c for c in categories(r) if metric in metrics_for(c)]
    series = {}
    for cat in cats:
        for s in r.systems:
            pts = [m for k in r.kbps if (m := means(r, cat, s, k)) and m[metric] is not None]
            if pts:
                series[cat, s] = ([p["actual_kbps"] for p in pts], [p[metric] for p in pts])
    cats = [c for c in cats if any(key[0] == c for key in series)]
    if not cats:
        return False
    fig, axes = plt.subplots(1, len(cats), figsize=(3.6 * len(cats), 3.0), squeeze=False)
    for ax, cat in zip(axes[0], cats):
        for s, style in zip(r.systems, ("o-", "s--")):
            if (cat, s) in series:
                ax.plot(*series[cat, s], style, label=s, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(r.kbps), [f"{k:g}" for k in r.kbps])
        ax.minorticks_off()
        ax.set_title(f"{cat}", fontsize=9)
        ax.set_xlabel("actual kbps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{LABELS[metric][0]} ({'↓' if metric == 'mel_distance' else '↑'})", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return True


def _atomic(path: Path, write: Callable[[Path], bool | None]) -> bool:
    """Call ``write(tmp)`` and rename tmp onto ``path``, unless it returned False."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        if write(tmp) is False:
            return False
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_outputs(r: EvalResult, out: Path) -> list[Path]:
    """Write the plots, then report.md, then results.json (last: it marks a complete run).

    Each file is renamed into place whole; plots of metrics without any score this time are
    removed, so that a folder never mixes two runs.
    """
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for m in METRICS:
        path = out / f"{m}.png"
        if _atomic(path, lambda tmp: plot(r, m, tmp)):
            plots.append(path.name)
        else:
            path.unlink(missing_ok=True)
    _atomic(out / "report.md", lambda tmp: tmp.write_text(report_markdown(r, plots)))
    _atomic(out / "results.json", lambda tmp: tmp.write_text(json.dumps(to_json(r), indent=1) + "\n"))
    return [out / p for p in plots] + [out / "report.md", out / "results.json"]
