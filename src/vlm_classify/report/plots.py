"""The report's figures (PNG, matplotlib's Agg backend). Each function draws one figure and
returns its PNG bytes (the report writes its files only once everything is built); emulated arms
carry "(emulated)" in their names, so titles and legends say it."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..metrics import INVALID

DPI = 110
EMULATED_NOTE = " (includes emulated arms)"


def _figure(figsize: tuple[float, float], ncols: int = 1) -> tuple[Figure, Any]:
    """A figure on the Agg canvas (no pyplot: no global state, safe in any thread)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _save(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    return buf.getvalue()


def _wrap(title: str, width_in: float, fontsize: float = 10) -> str:
    """Wrap a title to the figure's width (about 0.6 em per character)."""
    chars = max(20, int(width_in * 72 / (fontsize * 0.6)))
    return "\n".join(textwrap.wrap(title, chars)) or title


def accuracy(rows: Sequence[tuple[str, float, float, float]], title: str) -> bytes:
    """Bars of accuracy per arm with their 95% intervals: `(label, accuracy, low, high)`."""
    width = max(5.5, 1.4 * len(rows) + 2)
    fig, ax = _figure(figsize=(width, 3.8))
    names = [r[0] for r in rows]
    acc = np.array([r[1] for r in rows]) * 100
    err = np.array([[r[1] - r[2], r[3] - r[1]] for r in rows]).T * 100
    bars = ax.bar(names, acc, yerr=err, capsize=6, color="#4c72b0", alpha=0.85)
    for bar, v in zip(bars, acc, strict=True):
        x = bar.get_x() + bar.get_width() / 2
        ax.text(x, v / 2, f"{v:.1f}%", ha="center", va="center", color="white", fontsize=9)
    ax.set_ylabel("accuracy (%) with 95% CI")
    ax.set_ylim(0, 105)
    ax.set_title(_wrap(title, width - 1), fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    return _save(fig)


def class_deltas(deltas: Sequence[dict[str, Any]], title: str, top: int = 12) -> bytes:
    """The largest per-class gains and losses against the baseline (light bars: small support)."""
    ranked = sorted(deltas, key=lambda d: d["delta"])
    losses = [d for d in ranked if d["delta"] < 0][:top]
    gains = [d for d in ranked if d["delta"] > 0][-top:]
    shown = losses + gains
    fig, ax = _figure(figsize=(7, max(2.5, 0.25 * len(shown) + 1.2)))
    if not shown:
        ax.text(0.5, 0.5, "no class changed", ha="center", va="center")
        ax.set_axis_off()
    else:
        y = np.arange(len(shown))
        colors = ["#c44e52" if d["delta"] < 0 else "#55a868" for d in shown]
        alphas = [0.45 if d["small_support"] else 0.9 for d in shown]
        for yi, d, c, a in zip(y, shown, colors, alphas, strict=True):
            ax.barh(yi, d["delta"] * 100, color=c, alpha=a)
        ax.set_yticks(y, [f"{d['label']} (n={d['support']})" for d in shown], fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("accuracy change (pp); pale bars: fewer than 10 test items")
    ax.set_title(_wrap(title, 6), fontsize=10)
    return _save(fig)


def confusion_cells(
    conf: dict[str, Any], top: int = 30
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, str]:
    """What the confusion heatmap shows: row names, column names, counts, row-normalised shares
    and a note. Above `top` classes, the `top` most-confused ones; when some answers were not a
    label, a last "(invalid)" column counts them per true class (rows still sum to 1)."""
    labels = conf["labels"]
    m = np.array(conf["matrix"], dtype=float)
    shown = list(range(len(labels)))
    note = ""
    if len(labels) > top:
        off = m.copy()
        np.fill_diagonal(off, 0)
        involvement = off.sum(axis=0) + off.sum(axis=1)
        shown = sorted(np.argsort(-involvement, kind="stable")[:top].tolist())
        note = f"{top} most-confused of {len(labels)} classes"
    invalid = np.array(conf["invalid"], dtype=float)
    support = m.sum(axis=1) + invalid
    scale = np.where(support == 0, 1, support)[:, None]
    counts = m[np.ix_(shown, shown)]
    rows = [labels[i] for i in shown]
    columns = list(rows)
    if invalid.any():
        counts = np.column_stack([counts, invalid[shown]])
        columns.append(INVALID)
    return rows, columns, counts, counts / scale[shown], note


def confusion(conf: dict[str, Any], title: str, top: int = 30) -> bytes:
    """Row-normalised confusion heatmap (see `confusion_cells`)."""
    rows, columns, counts, shares, note = confusion_cells(conf, top)
    size = min(11.0, max(4.0, 0.28 * len(columns) + 2.5))
    fig, ax = _figure(figsize=(size + 1.5, size))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    font = 8 if len(columns) <= 15 else 6
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=font)
    ax.set_yticks(range(len(rows)), rows, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    int(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=font - 1,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of the true class", fontsize=8)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10)
    return _save(fig)


def latency_hist(series: dict[str, list[float]], title: str) -> bytes:
    fig, ax = _figure(figsize=(7, 3.6))
    everything = np.concatenate([np.asarray(v) for v in series.values()])
    bins = np.histogram_bin_edges(everything, bins=min(50, max(10, len(everything) // 20)))
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (n={len(values)})")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig)


def latency_box(series: dict[str, list[float]], title: str) -> bytes:
    fig, ax = _figure(figsize=(max(6.0, 1.3 * len(series) + 2), 3.8))
    ax.boxplot(list(series.values()), showfliers=True)
    ax.set_xticks(range(1, len(series) + 1), list(series), fontsize=7, rotation=15)
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=10)
    return _save(fig)


def cost_curve(
    volumes: Sequence[float],
    curves: dict[str, list[float]],
    marks: Sequence[tuple[str, float]],
    volume: float,
    title: str,
) -> bytes:
    """Monthly cost against monthly volume (log-log), break-even points and the chosen volume.

    A break-even outside the plotted volumes is named under the chart instead of drawn.
    """
    fig, ax = _figure(figsize=(7, 4.2))
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = volumes[0], volumes[-1]
    for name, costs in curves.items():
        ax.plot(volumes, [max(c, 1e-6) for c in costs], label=name)
    ax.set_xlim(lo, hi)
    off: list[str] = []
    for name, v in marks:
        if not lo <= v <= hi:
            off.append(f"{name} breaks even at {v:,.0f}/month, off this chart")
            continue
        ax.axvline(v, color="grey", ls=":", lw=1)
        # Label on the side with room, so the text is not cut off at the right edge.
        right = math.log(v / lo) / math.log(hi / lo) > 0.55
        ax.annotate(
            f"{name}\nbreaks even at {v:,.0f}/month",
            xy=(v, 1),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            va="top",
            ha="right" if right else "left",
            xytext=(-3 if right else 3, -3),
            textcoords="offset points",
        )
    ax.axvline(volume, color="black", ls="--", lw=1, label=f"--volume {volume:,.0f}")
    ax.set_xlabel("images per month" + ("\n" + "\n".join(off) if off else ""))
    ax.set_ylabel("USD per month")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return _save(fig)


def training(rows: Sequence[dict[str, str]], title: str) -> bytes:
    """Loss and accuracy from a training results file (empty cells skipped): the fine-tuning
    API's per step, or a local job's `curves.csv` per epoch."""
    x_col = "epoch" if rows and "epoch" in rows[0] else "step"

    def series(col: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in rows:
            try:
                x, y = float(r[x_col]), float(r.get(col) or "nan")
            except (TypeError, ValueError, KeyError):
                continue
            if not math.isnan(y):
                xs.append(x)
                ys.append(y)
        return xs, ys

    fig, (ax1, ax2) = _figure(ncols=2, figsize=(9, 3.4))
    for col, ax in (
        ("train_loss", ax1),
        ("valid_loss", ax1),
        ("val_loss", ax1),
        ("train_accuracy", ax2),
        ("valid_mean_token_accuracy", ax2),
        ("val_accuracy", ax2),
    ):
        xs, ys = series(col)
        if xs:
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=col)
    for ax, name in ((ax1, "loss"), (ax2, "accuracy")):
        ax.set_xlabel(x_col)
        ax.set_ylabel(name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig)


def concurrency(studies: Sequence[Any], title: str) -> bytes:
    """Latency studies: latency boxes per concurrency level (one colour per study, ticks naming
    the level only), and p50/p95 by level."""
    fig, (ax1, ax2) = _figure(ncols=2, figsize=(10, 3.9))
    colors = [f"C{i % 10}" for i in range(len(studies))]
    position, ticks, tick_names = 1.0, [], []
    for st, color in zip(studies, colors, strict=True):
        boxes, places = [], []
        for level in st.levels:
            c = level["concurrency"]
            values = [
                float(s["latency_ms"])
                for s in st.samples
                if s.get("concurrency") == c and s.get("latency_ms") and not s.get("error")
            ]
            if values:
                boxes.append(values)
                places.append(position)
                ticks.append(position)
                tick_names.append(f"x{c}")
                position += 1
        if boxes:
            ax1.boxplot(
                boxes,
                positions=places,
                showfliers=False,
                patch_artist=True,
                boxprops={"facecolor": color, "alpha": 0.45},
                medianprops={"color": "black"},
            )
            ax1.plot([], [], "s", color=color, alpha=0.6, label=st.display)
            position += 0.6  # a gap between studies
        xs = [int(r["concurrency"]) for r in st.levels]
        for key, style in (("p50_ms", "-o"), ("p95_ms", "--o")):
            ys = [float(r[key]) if r.get(key) else math.nan for r in st.levels]
            ax2.plot(xs, ys, style, color=color, label=f"{st.display} {key[:3]}")
    if ticks:
        ax1.set_xticks(ticks, tick_names, fontsize=8)
        ax1.set_xlim(0.3, position - 0.3)
        ax1.legend(fontsize=7)
    ax1.set_xlabel("concurrent requests")
    ax1.set_ylabel("latency (ms), outliers hidden")
    levels = sorted({int(r["concurrency"]) for st in studies for r in st.levels})
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(levels, [str(c) for c in levels])
    ax2.minorticks_off()
    ax2.set_xlabel("concurrent requests")
    ax2.set_ylabel("latency (ms)")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig)


def reliability(series: dict[str, Sequence[dict[str, Any]]], title: str) -> bytes:
    """Reliability diagram: accuracy against mean confidence per non-empty bin, one line per arm
    (the diagonal is perfect calibration), and below it the share of items in each bin."""
    fig = Figure(figsize=(7, 5.6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    for name, bins in series.items():
        full = [b for b in bins if b["count"]]
        total = sum(b["count"] for b in full)
        (line,) = top.plot(
            [b["mean_confidence"] for b in full],
            [b["accuracy"] for b in full],
            marker="o",
            ms=4,
            label=f"{name} (n={total})",
        )
        edges = [bins[0]["lower"], *(b["upper"] for b in bins)]
        shares = [b["count"] / total if total else 0 for b in bins]
        bottom.stairs(shares, edges, color=line.get_color())
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy in the bin")
    top.legend(fontsize=8, loc="upper left")
    top.set_title(_wrap(title, 6.5), fontsize=10)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share of items")
    return _save(fig)


def coverage(
    series: dict[str, Sequence[dict[str, Any]]],
    marks: dict[str, dict[str, Any]],
    title: str,
) -> bytes:
    """Accuracy of the answered items against the share answered, one line per arm; a dot at
    the threshold --review-cost chose (`marks`: the arm's `review.best`)."""
    fig, ax = _figure(figsize=(7, 4.2))
    for name, points in series.items():
        (line,) = ax.plot(
            [p["coverage"] * 100 for p in points],
            [p["accuracy"] * 100 for p in points],
            label=name,
        )
        best = marks.get(name)
        if best:
            ax.plot(
                best["auto_share"] * 100,
                best["auto_accuracy"] * 100,
                "o",
                color=line.get_color(),
                ms=7,
                mec="black",
            )
            right = best["auto_share"] > 0.7  # label on the side with room
            ax.annotate(
                f"threshold {best['threshold']:.3g}",
                (best["auto_share"] * 100, best["auto_accuracy"] * 100),
                xytext=(-6 if right else 6, -12),
                textcoords="offset points",
                ha="right" if right else "left",
                fontsize=7,
            )
    ax.set_xlim(0, 100)
    ax.set_xlabel("images answered automatically (%), the most confident first")
    ax.set_ylabel("accuracy of those answered (%)")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(_wrap(title, 6.5), fontsize=10)
    return _save(fig)
