"""Draw the figures, make the error gallery's thumbnails, and render report.md and report.html
(self-contained: every image is a data URI, no external resource). Everything is returned as
bytes: the caller writes the files once the whole report is built."""

from __future__ import annotations

import base64
import csv
import io
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image

from . import confidence, decide, plots
from .load import Aligned, latency_studies
from .tables import (
    Figure,
    Section,
    accuracy_table,
    class_delta_table,
    comparison_table,
    confusion_table,
    cost_notes,
    cost_tables,
    latency_tables,
    per_class_table,
)

_NUMERIC = re.compile(r"^[-+]?\$?[\d,.]+(%| pp| ms)?( \*)?$")
THUMB_PX = 150
GALLERY_PAIRS = 8
PER_PAIR = 4


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _thumb(path: Path) -> str:
    """A small JPEG of `path` as a data URI (an unreadable image gives an empty string)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=75)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _note(m: dict[str, Any]) -> str:
    return plots.EMULATED_NOTE if any(a["emulated"] for a in m["arms"].values()) else ""


def _figures(prepared_dir: Path, m: dict[str, Any], al: Aligned) -> dict[str, list[Figure]]:
    """Every figure, drawn in memory (`Figure.data`), under `plots/` in the report folder."""
    arms = m["arms"]
    note = _note(m)
    figs: dict[str, list[Figure]] = {
        k: []
        for k in ("accuracy", "classes", "latency", "cost", "calibration", "training", "decide")
    }

    def add(section: str, title: str, name: str, data: bytes, caption: str = "") -> None:
        figs[section].append(Figure(title, f"plots/{name}", caption, data=data))

    rows = [(a["display"], a["accuracy"], *a["accuracy_ci"]) for a in arms.values()]
    add(
        "accuracy",
        "Accuracy per arm",
        "accuracy.png",
        plots.accuracy(rows, f"Accuracy on {len(al.ids)} test items, 95% CI{note}"),
    )
    for name, c in m["comparisons"].items():
        title = f"{arms[name]['display']} vs {arms[m['baseline']]['display']}: per-class change"
        add(
            "classes",
            title,
            f"class-deltas-{name}.png",
            plots.class_deltas(c["per_class"], title),
        )
    for name, a in arms.items():
        title = f"Confusion matrix: {a['display']}"
        caption = "the last column counts answers that were not a label" if a["invalid"] else ""
        add(
            "classes",
            title,
            f"confusion-{name}.png",
            plots.confusion(a["confusion"], title),
            caption,
        )
    series = {
        arm.display: [
            float(arm.rows[i]["latency_ms"]) for i in al.ids if arm.rows[i].get("latency_ms")
        ]
        for arm in al.arms
        if arms[arm.name]["latency_ms"]
    }
    if series:
        title = f"Per-request latency while classifying{note}"
        add("latency", "Latency histogram", "latency-hist.png", plots.latency_hist(series, title))
        add("latency", "Latency boxplot", "latency-box.png", plots.latency_box(series, title))
    studies = latency_studies(prepared_dir, list(m["latency_studies"]))
    if studies:
        title = "Latency study by concurrency" + (
            plots.EMULATED_NOTE if any(s.emulated for s in studies) else ""
        )
        add("latency", title, "latency-concurrency.png", plots.concurrency(studies, title))
        hist: dict[str, list[float]] = {}
        for st in studies:
            for x in st.samples:
                if x.get("latency_ms") and not x.get("error"):
                    key = f"{st.display} x{x.get('concurrency', '?')}"
                    hist.setdefault(key, []).append(float(x["latency_ms"]))
        if hist:
            title = "Latency study by concurrency: distribution" + (
                plots.EMULATED_NOTE if any(s.emulated for s in studies) else ""
            )
            add("latency", title, "latency-study-hist.png", plots.latency_hist(hist, title))
    curve = m["cost"]["curve"]
    if curve["monthly_usd"]:
        lines = {arms[n]["display"]: v for n, v in curve["monthly_usd"].items()}
        marks = [
            (arms[n]["display"], be["volume_per_month"])
            for n, be in m["cost"]["break_even"].items()
            if be["volume_per_month"]
        ]
        title = f"Monthly cost against volume, served {m['cost']['serving']}{note}"
        add(
            "cost",
            title,
            "cost-volume.png",
            plots.cost_curve(curve["volumes"], lines, marks, m["cost"]["volume_per_month"], title),
        )
    calibrated = {a["display"]: a["calibration"] for a in arms.values() if a.get("calibration")}
    if calibrated:
        add(
            "calibration",
            "Reliability diagram",
            "reliability.png",
            plots.reliability(
                {n: c["bins"] for n, c in calibrated.items()},
                f"Reliability: accuracy against confidence, {len(al.ids)} test items{note}",
            ),
            "each dot is a confidence bin; below the diagonal the arm is over-confident",
        )
        add(
            "calibration",
            "Accuracy against coverage",
            "coverage.png",
            plots.coverage(
                {n: c["coverage_curve"] for n, c in calibrated.items()},
                {n: c["review"]["best"] for n, c in calibrated.items() if c.get("review")},
                f"Answer when confident, send the rest to a person{note}",
            ),
            (
                "the dot marks the threshold that minimises the cost per image, wrong labels "
                "that ship included (--review-cost, --error-cost)"
                if any(
                    (c.get("review") or {}).get("error_usd_per_wrong_label")
                    for c in calibrated.values()
                )
                else "the dot marks the threshold that minimises the cost per correct label "
                "(--review-cost)"
            )
            if any(c.get("review") for c in calibrated.values())
            else "",
        )
    for c in (m.get("decide") or {}).get("curves", []):
        png = Path(c["png"])
        if png.is_file():
            add(
                "decide",
                f"Learning curve: {c['name']} ({c.get('base_model')})",
                f"curve-{c['name']}.png",
                png.read_bytes(),
                "test accuracy with 95% intervals against train images per class; dashed: the "
                "fitted a - b n^-c",
            )
    for arm in al.arms:
        job = arm.finetune or {}
        if job.get("results_csv"):
            path = Path(job["_dir"]) / job["results_csv"]
            if path.is_file():
                with path.open(newline="", encoding="utf-8") as f:
                    rows_csv = list(csv.DictReader(f))
                title = f"Fine-tuning curves: {arm.display} ({job.get('fine_tuned_model', '')})"
                add("training", title, f"training-{arm.name}.png", plots.training(rows_csv, title))
    return figs


def _gallery(prepared_dir: Path, out: Path, m: dict[str, Any], al: Aligned) -> list[dict[str, Any]]:
    """Thumbnails of misclassified items for the top confusions, the compared arms' first."""
    names = [*m["comparisons"], m["baseline"]]
    per_arm = max(1, GALLERY_PAIRS // len(names))
    cards = []
    for name in names:
        a = m["arms"][name]
        for pair in a["top_confusions"][:per_arm]:
            items = []
            for item_id in pair["ids"][:PER_PAIR]:
                image = prepared_dir / al.manifest[item_id].image_path
                items.append(
                    {
                        "id": item_id,
                        "data_uri": _thumb(image),
                        "href": Path(os.path.relpath(image, out)).as_posix(),
                    }
                )
            cards.append(
                {
                    "arm": a["display"],
                    "true": pair["true"],
                    "predicted": pair["predicted"],
                    "count": pair["count"],
                    "items": items,
                }
            )
    return cards


def _sections(m: dict[str, Any], figs: dict[str, list[Figure]]) -> list[Section]:
    out = [Section("Accuracy", "accuracy", tables=[accuracy_table(m)], figures=figs["accuracy"])]
    if m["comparisons"]:
        tables = [comparison_table(m)] + [class_delta_table(m, n) for n in m["comparisons"]]
        out.append(Section("Against the baseline", "comparison", tables=tables))
    out.append(
        Section(
            "Classes and confusions",
            "classes",
            tables=[confusion_table(m)] + [per_class_table(m, n) for n in m["arms"]],
            figures=figs["classes"],
        )
    )
    lat = latency_tables(m)
    if lat or figs["latency"]:
        out.append(Section("Latency", "latency", tables=lat, figures=figs["latency"]))
    out.append(Section("Cost", "cost", cost_notes(m), tables=cost_tables(m), figures=figs["cost"]))
    cal = confidence.table(m)
    out.append(
        Section(
            "Calibration and abstention",
            "calibration",
            confidence.sentences(m),
            tables=[cal] if cal else [],
            figures=figs["calibration"],
        )
    )
    if figs["training"]:
        out.append(Section("Fine-tuning", "training", figures=figs["training"]))
    said = decide.sentences(m.get("decide") or {})
    if said or figs["decide"]:
        out.append(
            Section(
                "Fewer labelled images, fewer test images",
                "decide",
                said,
                figures=figs["decide"],
            )
        )
    return out


def _env(autoescape: bool) -> jinja2.Environment:
    def load(name: str) -> str:
        return (resources.files("vlm_classify") / "data" / name).read_text("utf-8")

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    env.tests["isnum"] = lambda v: bool(_NUMERIC.match(str(v)))
    return env


def render(prepared_dir: Path, out: Path, m: dict[str, Any], al: Aligned) -> dict[str, bytes]:
    """The plots, report.md and report.html for the report folder `out`, as bytes by path
    relative to it (nothing is written here)."""
    figs = _figures(prepared_dir, m, al)
    for group in figs.values():
        for f in group:
            f.data_uri = _data_uri(f.data)
    context = {
        "m": m,
        "title": "vlm-classify report",
        "verdict": m["verdict"]["text"],
        "sections": _sections(m, figs),
        "gallery": _gallery(prepared_dir, out, m, al),
        "excluded": m["dataset"]["excluded"],
        "emulated": any(a["emulated"] for a in m["arms"].values()),
    }
    files = {
        "report.md": _env(False).get_template("report.md.j2").render(context).encode("utf-8"),
        "report.html": _env(True).get_template("report.html.j2").render(context).encode("utf-8"),
    }
    return files | {f.path: f.data for group in figs.values() for f in group}
