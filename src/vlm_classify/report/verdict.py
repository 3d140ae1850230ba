"""The verdict: a few sentences that answer "should I fine-tune?", every number taken from
metrics.json (the `source` of each is recorded next to the text)."""

from __future__ import annotations

from typing import Any


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def pp(x: float | None, digits: int = 1) -> str:
    """A difference of proportions in percentage points, signed."""
    return "n/a" if x is None else f"{x * 100:+.{digits}f} pp"


def usd(x: float | None) -> str:
    """Dollars: cents above $1, four significant decimals below (per-image prices are tiny)."""
    if x is None:
        return "n/a"
    sign = "-" if x < 0 else ""
    x = abs(x)
    return f"{sign}${x:,.2f}" if x >= 1 or x == 0 else f"{sign}${x:.4g}"


def pval(p: float | None, name: str = "p") -> str:
    """A p-value as "p = 0.031" (or "mid-p = 0.031" with `name`), "p < 0.0001" when tiny."""
    if p is None:
        return "n/a"
    if p < 0.0001:
        return f"{name} < 0.0001"
    return f"{name} = {p:.4f}" if p < 0.01 else f"{name} = {p:.3f}"


def count(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def approx_count(x: float) -> str:
    """A large count in words, two significant figures: ~1.9 billion, ~63 million."""
    for size, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million")):
        if x >= size:
            v = x / size
            return f"~{v:.1f} {word}" if v < 10 else f"~{v:,.0f} {word}"
    return f"~{x:,.0f}"


def times(x: float) -> str:
    """A ratio to three significant figures: 186,166 -> 186,000."""
    return f"{float(f'{x:.3g}'):,.0f}"


INVALID_WARN = 0.05
"""An arm whose share of answers that are not a label reaches this gets a sentence of its own."""
CHANCE_P = 0.05


def verdict(metrics: dict[str, Any]) -> dict[str, Any]:
    """Sentences for each arm against the baseline, and where each number comes from."""
    arms = metrics["arms"]
    base = metrics["baseline"]
    b = arms[base]
    cost = metrics["cost"]
    text: list[str] = []
    sources: dict[str, str] = {}
    if any(a["emulated"] for a in arms.values()):
        text.append(
            "Emulated: arms marked (emulated) were answered by the built-in emulator, not a real "
            "model; their numbers show how the report reads, not how the model performs."
        )
    for name, a in arms.items():
        if not a.get("sample_verified", True):
            text.append(
                f"Unverified: {a['display']} was recorded before arms were bound to their "
                "sample, so it is not bound to its sample: its items match the current split "
                "by id and label, but its images were not checked. Rerun it with "
                "`vlm-classify classify ... --reset` to be sure."
            )
            sources[f"{name}.sample_verified"] = f"arms.{name}.sample_verified"
    if metrics["dataset"].get("imagenet_ids"):
        for name, a in arms.items():
            if "imagenet" in str(a.get("pretrained_on") or "").lower():
                text.append(
                    f"Seen in pretraining: {a['display']} starts from ImageNet weights, and this "
                    "sample's classes carry ImageNet (WordNet) ids, as Stanford Dogs' do: its test "
                    "images may be among those it was pretrained on, so its accuracy may be "
                    "optimistic."
                )
                sources[f"{name}.pretrained_on"] = f"arms.{name}.pretrained_on"
    if len(arms) == 1:
        text.append(
            f"{b['display']} is correct on {pct(b['accuracy'])} of {b['n']} test items "
            f"(95% CI {pct(b['accuracy_ci'][0])} to {pct(b['accuracy_ci'][1])}). "
            "Run a second arm (a fine-tuned model, another prompt) to compare."
        )
        sources |= {"accuracy": f"arms.{base}.accuracy", "ci": f"arms.{base}.accuracy_ci"}
    for name, c in metrics["comparisons"].items():
        a = arms[name]
        text.append(_accuracy_sentence(a, b, c))
        sources |= {
            f"{name}.delta": f"comparisons.{name}.delta_accuracy",
            f"{name}.ci": f"comparisons.{name}.delta_ci",
            f"{name}.mid_p": f"comparisons.{name}.mcnemar.mid_p_value",
            f"{name}.fixed": f"comparisons.{name}.mcnemar.fixed",
            f"{name}.broken": f"comparisons.{name}.mcnemar.broken",
            f"{name}.accuracy": f"arms.{name}.accuracy",
            f"{name}.baseline_accuracy": f"arms.{base}.accuracy",
            f"{name}.n": f"comparisons.{name}.n",
        }
        be = cost["break_even"].get(name)
        if be:
            text.append(_cost_sentence(a, b, be, cost))
            sources |= {
                f"{name}.cost": f"cost.break_even.{name}",
                f"{name}.serving": "cost.serving",
                f"{name}.volume": "cost.volume_per_month",
            }
            if be.get("usd_per_error_avoided") is not None:
                sources[f"{name}.usd_per_error_avoided"] = (
                    f"cost.break_even.{name}.usd_per_error_avoided"
                )
            if a["cost"].get("training_usd"):
                sources[f"{name}.training"] = f"arms.{name}.cost.training_usd"
            if a["cost"].get("hosting_per_hour"):
                sources[f"{name}.hosting"] = f"arms.{name}.cost.hosting_per_hour"
        else:
            missing = a["cost"]["error"] or b["cost"]["error"]
            text.append(f"Cost not compared: {missing}.")
    for name, a in arms.items():
        rate = a.get("invalid_rate")
        if rate is not None and rate >= INVALID_WARN:
            text.append(
                f"{a['display']}: {pct(rate, 1)} of its answers ({a['invalid']} of {a['n']}) "
                "were not one of the labels; they count as wrong. Read their raw answers in "
                "predictions.csv: the prompt or the answer format may be at fault rather than "
                "the model's eye."
            )
            sources[f"{name}.invalid_rate"] = f"arms.{name}.invalid_rate"
    for name, a in arms.items():
        for w in a.get("lifecycle") or []:
            text.append(f"Retirement: {w}.")
            sources[f"{name}.lifecycle"] = f"arms.{name}.lifecycle"
    return {"text": text, "sources": sources}


def _accuracy_sentence(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> str:
    """The difference with Tango's interval and McNemar's mid-p, and what they say about chance.

    The interval leaves out 0 exactly when McNemar's asymptotic test rejects, which is a little
    readier to reject than the mid-p test (4 fixed and 0 broken: it rejects, mid-p = 0.0625);
    when the two disagree the sentence says what each says.
    """
    d = c["delta_accuracy"]
    lo, hi = c["delta_ci"]
    m = c["mcnemar"]
    mid_p = m["mid_p_value"]
    if d > 0:
        change = f"gains {pp(d)} accuracy"
    elif d < 0:
        change = f"loses {pp(abs(d)).lstrip('+')} accuracy"
    else:
        change = "changes accuracy by 0.0 pp"
    stats = f"Tango score 95% CI {pp(lo)} to {pp(hi)}, McNemar {pval(mid_p, 'mid-p')}"
    if a["fine_tuned"] and not b["fine_tuned"]:
        s = f"Fine-tuning {change} ({stats}): {a['display']} against {b['display']}, "
    else:
        s = f"{a['display']} {change} against {b['display']} ({stats}): "
    s += (
        f"{pct(b['accuracy'])} to {pct(a['accuracy'])} on {c['n']} test items, "
        f"{m['fixed']} {_items(m['fixed'])} fixed and {m['broken']} broken."
    )
    includes_zero = lo <= 0 <= hi
    chance_by_p = mid_p >= CHANCE_P
    if includes_zero or chance_by_p:
        ci_says = "includes zero" if includes_zero else "leaves out zero"
        p_says = (
            f"McNemar's mid-p is {mid_p:.2g}, {'not ' if chance_by_p else ''}below {CHANCE_P:g}"
        )
        if includes_zero == chance_by_p:
            s += f" The interval {ci_says} and {p_says}: on these items the difference may be chance."
        else:
            s += (
                f" The interval {ci_says} but {p_says}: the two disagree at the margin, so on "
                "these items the difference may be chance."
            )
    return s


def _items(k: int) -> str:
    return "item" if k == 1 else "items"


def _cost_sentence(
    a: dict[str, Any], b: dict[str, Any], be: dict[str, Any], cost: dict[str, Any]
) -> str:
    volume, months, serving = cost["volume_per_month"], cost["months"], cost["serving"]
    extra = be["extra_monthly_usd_at_volume"]
    ca = a["cost"]
    fixed = []
    if ca.get("training_usd"):
        fixed.append(f"training {usd(ca['training_usd'])} amortised over {months:g} months")
    if ca.get("hosting_per_hour"):
        fixed.append(f"hosting {usd(ca['hosting_per_hour'])}/h")
    fallback = [x["display"] for x in (a, b) if x["cost"].get("serving_mode", serving) != serving]
    s = "Served realtime" if serving == "realtime" else "Served through the Batch API"
    s += (
        f", at {count(volume)} images a month it costs {usd(abs(extra))} "
        f"{'more' if extra >= 0 else 'less'} ({usd(be['monthly_usd_at_volume'])} vs "
        f"{usd(be['baseline_monthly_usd_at_volume'])} a month"
        + (f"; {', '.join(fixed)}" if fixed else "")
        + "); "
    )
    kind, point = be["kind"], be["volume_per_month"]
    if kind == "above" and be.get("far_beyond_volume"):
        s += (
            f"it pays for itself only above {approx_count(point)} images a month, "
            f"{times(be['times_volume'])}× your volume: in practice never."
        )
    elif kind == "above":
        s += f"it pays for itself above {count(point)} images a month."
    elif kind == "below":
        s += f"it is the cheaper arm only below {count(point)} images a month."
    elif kind == "never":
        s += f"it never costs less than {b['display']}, at any volume"
        per_error = be.get("usd_per_error_avoided")
        if per_error is not None:
            s += (
                f"; it is worth it if each error avoided is worth more than {usd(per_error)} to you"
            )
        s += "."
    else:
        s += f"it costs no more than {b['display']} at any volume."
    if fallback:
        s += (
            f" Note: {' and '.join(fallback)} cannot be served through the Batch API and "
            f"{'is' if len(fallback) == 1 else 'are'} priced realtime."
        )
    if be.get("training_unknown"):
        unknown = [x for x in (a, b) if x["cost"].get("training_usd") is None]
        who = [x["display"] for x in unknown]
        why = (
            "no training price in the table: add training_per_1m with --pricing"
            if all(x["cost"].get("trained_tokens") is not None for x in unknown)
            else "no trained_tokens recorded"
        )
        s += (
            f" The training cost of {' and '.join(who)} is unknown ({why}) "
            "and is left out: the real monthly cost is higher"
            + (", and so is the break-even." if kind == "above" else ".")
        )
    return s
