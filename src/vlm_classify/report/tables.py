"""The report's tables, formatted once from metrics.json for both report.md and report.html."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..metrics import SMALL_SUPPORT
from .verdict import count, pct, pp, pval, usd


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    collapsed: bool = False
    """Long tables: folded away in the HTML (`<details>`), printed in full in Markdown."""


@dataclass
class Figure:
    title: str
    path: str
    """Relative to the report folder."""
    caption: str = ""
    data: bytes = b""
    """The PNG itself."""
    data_uri: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:,.0f}"


def accuracy_table(m: dict[str, Any]) -> Table:
    rows = []
    for a in m["arms"].values():
        lo, hi = a["accuracy_ci"]
        rows.append(
            [
                a["display"],
                a["model"],
                a["mode"],
                str(a["n"]),
                f"{pct(a['accuracy'])} [{pct(lo, 1)}, {pct(hi, 1)}]",
                pct(a["balanced_accuracy"]),
                f"{a['macro_f1']:.3f}",
                f"{a['invalid']} ({pct(a['invalid_rate'], 1)})",
                str(a["errors"]),
                ", ".join(f"{k.replace('_', '-')} {pct(v)}" for k, v in (a["top_k"] or {}).items())
                or "-",
            ]
        )
    return Table(
        "Accuracy per arm",
        [
            "arm",
            "model",
            "mode",
            "n",
            "accuracy [95% CI]",
            "balanced acc.",
            "macro-F1",
            "invalid answers",
            "errors (excluded)",
            "top-k",
        ],
        rows,
        "Accuracy intervals are Wilson 95% intervals. Invalid answers (not a label) count as wrong. "
        "top-k needs per-label scores, which chat models do not return: '-'.",
    )


def comparison_table(m: dict[str, Any]) -> Table:
    base = m["arms"][m["baseline"]]["display"]
    rows = []
    for name, c in m["comparisons"].items():
        lo, hi = c["delta_ci"]
        blo, bhi = c["delta_ci_bootstrap"]
        mc = c["mcnemar"]
        rows.append(
            [
                m["arms"][name]["display"],
                base,
                str(c["n"]),
                pp(c["delta_accuracy"]),
                f"{pp(lo)} to {pp(hi)}",
                f"{pp(blo)} to {pp(bhi)}",
                pval(mc["mid_p_value"]).removeprefix("p = "),
                pval(mc["p_value"]).removeprefix("p = "),
                str(mc["fixed"]),
                str(mc["broken"]),
            ]
        )
    return Table(
        "Each arm against the baseline (same items)",
        [
            "arm",
            "baseline",
            "n",
            "Δ accuracy",
            "95% CI (Tango score)",
            "95% CI (bootstrap)",
            "McNemar mid-p",
            "McNemar exact p",
            "fixed",
            "broken",
        ],
        rows,
        "fixed: wrong in the baseline, right in the arm; broken: the reverse. The ids are in "
        "metrics.json (comparisons.<arm>.fixed_ids / broken_ids). The Tango score interval is "
        "the one the verdict quotes; it leaves out 0 exactly when McNemar's asymptotic test has "
        "p < 0.05, so at the margin it can disagree with the mid-p test. The exact p is "
        "conservative; the paired bootstrap is shown for reference and is too narrow when few "
        "items differ. Coverage of each: docs/report.md.",
    )


def class_delta_table(m: dict[str, Any], name: str, top: int = 10) -> Table:
    c = m["comparisons"][name]
    ranked = sorted(c["per_class"], key=lambda d: d["delta"])
    shown = [d for d in ranked if d["delta"] < 0][:top] + [d for d in ranked if d["delta"] > 0][
        -top:
    ][::-1]
    rows = [
        [
            d["label"],
            str(d["support"]),
            pct(d["baseline_accuracy"], 0),
            pct(d["accuracy"], 0),
            pp(d["delta"], 0) + (" *" if d["small_support"] else ""),
        ]
        for d in shown
    ]
    note = ""
    if c["small_support_classes"]:
        note = (
            f"* {c['small_support_classes']} of {len(c['per_class'])} classes have fewer than "
            f"{SMALL_SUPPORT} test items: one item moves their accuracy by many points, so read "
            "these deltas as anecdotes, not findings."
        )
    return Table(
        f"{m['arms'][name]['display']}: largest per-class losses and gains",
        ["class", "test items", "baseline", "arm", "Δ"],
        rows,
        note,
    )


def per_class_table(m: dict[str, Any], name: str) -> Table:
    a = m["arms"][name]
    rows = [
        [
            r["label"],
            str(r["support"]),
            str(r["correct"]),
            pct(r["accuracy"], 1),
            "-" if r["precision"] is None else f"{r['precision']:.3f}",
            f"{r['recall']:.3f}",
            f"{r['f1']:.3f}",
        ]
        for r in a["per_class"]
    ]
    return Table(
        f"Per-class figures: {a['display']}",
        ["class", "support", "correct", "accuracy", "precision", "recall", "F1"],
        rows,
        "precision '-': the class was never predicted (undefined, not 0).",
        collapsed=True,
    )


def confusion_table(m: dict[str, Any], top: int = 8) -> Table:
    rows = []
    for a in m["arms"].values():
        for c in a["top_confusions"][:top]:
            rows.append([a["display"], c["true"], c["predicted"], str(c["count"])])
    return Table("Most frequent confusions", ["arm", "true", "predicted", "items"], rows)


def latency_tables(m: dict[str, Any]) -> list[Table]:
    out = []
    rows = [
        [
            a["display"],
            a["model"],
            str(a["latency_ms"]["n"]),
            _ms(a["latency_ms"]["mean"]),
            _ms(a["latency_ms"]["p50"]),
            _ms(a["latency_ms"]["p95"]),
            _ms(a["latency_ms"]["p99"]),
        ]
        for a in m["arms"].values()
        if a["latency_ms"]
    ]
    if rows:
        out.append(
            Table(
                "Per-request latency while classifying (ms)",
                ["arm", "model", "requests", "mean", "p50", "p95", "p99"],
                rows,
                "Measured by classify, with its concurrency and retries: use vlm-classify latency "
                "for the controlled study. Batch arms have no per-request latency.",
            )
        )
    rows = []
    for name, s in m["latency_studies"].items():
        label = f"{name} (emulated)" if s["emulated"] else name
        for r in s["levels"]:
            rows.append(
                [
                    label,
                    s["model"],
                    r["concurrency"],
                    f"{r['success_count']}/{r['error_count']}",
                    r["mean_ms"],
                    r["p50_ms"],
                    r["p90_ms"],
                    r["p95_ms"],
                    r["p99_ms"],
                    r["std_dev_ms"],
                    r["throughput_rps_est"],
                    r.get("throughput_rps_measured", ""),
                ]
            )
    if rows:
        out.append(
            Table(
                "Latency study (vlm-classify latency), ms",
                [
                    "study",
                    "model",
                    "concurrency",
                    "ok/errors",
                    "mean",
                    "p50",
                    "p90",
                    "p95",
                    "p99",
                    "std",
                    "req/s (1000/mean)",
                    "req/s measured",
                ],
                rows,
                "The original method: timed around the SDK call, up to 3 attempts with linear "
                "backoff, failed requests counted apart.",
            )
        )
    return out


def cost_notes(m: dict[str, Any]) -> list[str]:
    """The pricing caveats of each arm (fallbacks, unknown training cost), one line each."""
    lines = [f"Every arm is priced as served {m['cost']['serving']} (--serving)."]
    for a in m["arms"].values():
        lines += [f"{a['display']}: {note}." for note in a["cost"].get("notes", [])]
    return lines


def cost_tables(m: dict[str, Any]) -> list[Table]:
    volume = count(m["cost"]["volume_per_month"])
    rows = []
    for a in m["arms"].values():
        c = a["cost"]
        if c["error"]:
            rows.append([a["display"], c["error"], "", "", "", "", "", "", ""])
            continue
        training = "-"
        if a["fine_tuned"]:
            training = "unknown" if c["training_usd"] is None else usd(c["training_usd"])
        if c["price_mode"] == "compute":  # a local model: its machine's time
            prices = (
                f"{c['device']} at {usd(c['price_per_hour'])}/h, {c['images_per_s']:,.1f} images/s"
            )
            priced, realtime, batch = "compute time", usd(c["per_1000"]), usd(c["per_1000"])
        else:
            prices = f"{c['price_entry']} ({c['price_date']})"
            priced = c["serving_mode"] + (
                " (fine-tuned prices)" if c["price_mode"] == "finetuned" else ""
            )
            realtime = usd(c["per_1000_realtime"])
            batch = usd(c["per_1000_batch"]) if c["per_1000_batch"] is not None else "-"
        rows.append(
            [
                a["display"],
                prices,
                priced,
                realtime,
                batch,
                training,
                usd(c["hosting_per_hour"]) if a["fine_tuned"] else "-",
                usd(c["per_correct"]),
                usd(c.get("per_correct_at_volume")),
            ]
        )
    tables = [
        Table(
            "Cost per arm (USD)",
            [
                "arm",
                "prices",
                "priced as",
                "per 1,000 images realtime",
                "per 1,000 images batch",
                "training",
                "hosting / hour",
                "per correct prediction (tokens only)",
                f"per correct prediction at {volume}/month (all costs)",
            ],
            rows,
            "From the arm's own mean tokens per image on the compared items; a local model from "
            "its measured images per second at its device's hourly price. 'tokens only' leaves "
            "out training and hosting; 'all costs' is the monthly cost at --volume (training "
            "amortised, hosting, tokens or compute) over the correct predictions a month. Prices "
            "are data (pricing.json or --pricing, --cpu/--gpu-price-per-hour): check their date.",
        )
    ]
    billed = billed_table(m)
    if billed is not None:
        tables.append(billed)
    cost = m["cost"]
    rows = []
    for name, be in cost["break_even"].items():
        kind, v = be["kind"], be["volume_per_month"]
        where = {
            "above": f"cheaper above {count(v)}/month",
            "below": f"cheaper below {count(v)}/month",
            "never": "never cheaper",
            "always": "cheaper or equal at any volume",
        }[kind]
        if kind == "above" and be.get("far_beyond_volume"):
            where += f" ({be['times_volume']:,.0f}x --volume: in practice never)"
        if be.get("training_unknown"):
            where += " (training cost unknown, left out)"
        rows.append(
            [
                m["arms"][name]["display"],
                usd(be["monthly_usd_at_volume"]),
                usd(be["baseline_monthly_usd_at_volume"]),
                usd(be["extra_monthly_usd_at_volume"]),
                usd(be["fixed_monthly_usd"]),
                where,
                usd(be.get("usd_per_error_avoided")),
            ]
        )
    if rows:
        tables.append(
            Table(
                f"Monthly cost at {volume} images a month, served {cost['serving']}, against "
                f"{m['arms'][m['baseline']]['display']}",
                [
                    "arm",
                    "arm / month",
                    "baseline / month",
                    "difference",
                    "fixed / month",
                    "break-even",
                    "cost per error avoided",
                ],
                rows,
                f"Training amortised over {cost['months']:g} months; hosting {cost['hours_per_month']:g} "
                "hours a month. Break-even counts money only; 'cost per error avoided' is the extra "
                "monthly cost divided by the errors the arm avoids a month.",
            )
        )
    return tables


def _change(ratio: float | None) -> str:
    return "" if ratio is None else f"{(ratio - 1) * 100:+.1f}%"


def billed_table(m: dict[str, Any]) -> Table | None:
    """Each chat arm's tokens and dollars as estimated against as billed (None: no arm has a
    check: local arms, served models, arms recorded before classify kept one)."""
    rows = []
    for a in m["arms"].values():
        b = (a.get("cost") or {}).get("estimate_vs_billed")
        if not b:
            continue
        flag = " (off)" if b["off"] else ""
        rows.append(
            [
                a["display"],
                a["model"],
                f"{b['price_mode']} ({b['price_entry']})",
                count(b["items"]) + (" (stale: rerun classify)" if b["stale"] else ""),
                count(b["estimated_prompt_tokens"]),
                count(b["billed_prompt_tokens"]),
                _change(b["prompt_ratio"]) + flag,
                count(b["estimated_completion_tokens"]),
                count(b["billed_completion_tokens"]),
                usd(b["estimated_usd"]),
                usd(b["billed_usd"]),
                _change(b["usd_ratio"]),
            ]
        )
    if not rows:
        return None
    return Table(
        "Estimated against billed, per arm (this evaluation's requests)",
        [
            "arm",
            "model",
            "priced as",
            "requests",
            "prompt tokens estimated",
            "prompt tokens billed",
            "Δ prompt",
            "completion estimated",
            "completion billed",
            "USD estimated",
            "USD billed",
            "Δ USD",
        ],
        rows,
        "Estimated: what `vlm-classify estimate` counts for the same requests (each model's "
        "image rule, the cookbook's message overheads, the answer schema; answers as the true "
        "label), recorded by classify in arm.json (tokens_check). Billed: the usage the service "
        "reported (predictions.csv). (off): the prompt tokens differ by more than 5%: "
        "`vlm-classify estimate --calibrate ARM` re-prices a plan from the bill.",
    )
