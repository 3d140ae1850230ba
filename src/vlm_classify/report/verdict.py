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


def pval(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "p < 0.0001" if p < 0.0001 else f"p = {p:.4f}" if p < 0.01 else f"p = {p:.3f}"


def count(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def verdict(metrics: dict[str, Any]) -> dict[str, Any]:
    """Sentences for each arm against the baseline, and where each number comes from."""
    arms = metrics["arms"]
    base = metrics["baseline"]
    b = arms[base]
    volume = metrics["cost"]["volume_per_month"]
    months = metrics["cost"]["months"]
    text: list[str] = []
    sources: dict[str, str] = {}
    if any(a["emulated"] for a in arms.values()):
        text.append(
            "Emulated: arms marked (emulated) were answered by the built-in emulator, not a real "
            "model; their numbers show how the report reads, not how the model performs."
        )
    if len(arms) == 1:
        text.append(
            f"{b['display']} is correct on {pct(b['accuracy'])} of {b['n']} test items "
            f"(95% CI {pct(b['accuracy_ci'][0])} to {pct(b['accuracy_ci'][1])}). "
            "Run a second arm (a fine-tuned model, another prompt) to compare."
        )
        sources |= {"accuracy": f"arms.{base}.accuracy", "ci": f"arms.{base}.accuracy_ci"}
    for name, c in metrics["comparisons"].items():
        a = arms[name]
        d = c["delta_accuracy"]
        lo, hi = c["delta_ci"]
        m = c["mcnemar"]
        gains = f"{'gains' if d >= 0 else 'loses'} {pp(d)} accuracy"
        stats = f"95% CI {pp(lo)} to {pp(hi)}, McNemar {pval(m['p_value'])}"
        if a["fine_tuned"]:
            s = f"Fine-tuning {gains} ({stats}): {a['display']} against {b['display']}, "
        else:
            s = f"{a['display']} {gains} over {b['display']} ({stats}): "
        s += (
            f"{pct(b['accuracy'])} to {pct(a['accuracy'])} on {c['n']} test items, "
            f"{m['fixed']} items fixed and {m['broken']} broken."
        )
        if lo <= 0 <= hi:
            s += " The interval includes zero: on these items the difference may be chance."
        text.append(s)
        sources |= {
            f"{name}.delta": f"comparisons.{name}.delta_accuracy",
            f"{name}.ci": f"comparisons.{name}.delta_ci",
            f"{name}.p": f"comparisons.{name}.mcnemar.p_value",
            f"{name}.accuracy": f"arms.{name}.accuracy",
        }
        be = metrics["cost"]["break_even"].get(name)
        if be:
            text.append(_cost_sentence(a, b, be, d, volume, months))
            sources[f"{name}.cost"] = f"cost.break_even.{name}"
        else:
            missing = a["cost"]["error"] or b["cost"]["error"]
            text.append(f"Cost not compared: {missing}.")
    return {"text": text, "sources": sources}


def _cost_sentence(
    a: dict[str, Any],
    b: dict[str, Any],
    be: dict[str, Any],
    delta: float,
    volume: float,
    months: float,
) -> str:
    extra = be["extra_monthly_usd_at_volume"]
    ca = a["cost"]
    fixed = []
    if ca.get("training_usd"):
        fixed.append(f"training {usd(ca['training_usd'])} amortised over {months:g} months")
    if ca.get("hosting_per_hour"):
        fixed.append(f"hosting {usd(ca['hosting_per_hour'])}/h")
    s = (
        f"At {count(volume)} images a month it costs {usd(abs(extra))} "
        f"{'more' if extra >= 0 else 'less'} ({usd(be['monthly_usd_at_volume'])} vs "
        f"{usd(be['baseline_monthly_usd_at_volume'])} a month"
        + (f"; {', '.join(fixed)}" if fixed else "")
        + "); "
    )
    kind, point = be["kind"], be["volume_per_month"]
    if kind == "above":
        s += f"it pays for itself above {count(point)} images a month."
    elif kind == "below":
        s += f"it is the cheaper arm only below {count(point)} images a month."
    elif kind == "never":
        s += f"it never costs less than {b['display']}, at any volume"
        if delta > 0 and extra > 0:
            s += (
                f"; it is worth it if each error avoided is worth more than "
                f"{usd(extra / (delta * volume))} to you"
            )
        s += "."
    else:
        s += f"it costs no more than {b['display']} at any volume."
    return s
