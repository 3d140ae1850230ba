"""The report's sections on deciding with fewer images: learning curves (`vlm-classify curve`)
and arms that stopped early (`classify --until-decided`).

Neither kind of arm belongs in the main comparison: a curve's arms are trained on subsets, and an
arm that stopped early answered a random part of the test split. `side_arms` names them, so the
default arm list leaves them out; this module reports them on their own, from their records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..curve import CURVES_DIR


def _json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def curve_docs(prepared_dir: Path) -> list[dict[str, Any]]:
    """Every finished curve under DIR/curves/, by name."""
    root = Path(prepared_dir) / CURVES_DIR
    docs = []
    for path in sorted(root.glob("*/curve.json")) if root.is_dir() else []:
        doc = _json(path)
        if doc and doc.get("points"):
            docs.append({"name": path.parent.name, "dir": str(path.parent), **doc})
    return docs


def stopped_early_names(prepared_dir: Path) -> list[str]:
    """Arms whose last run stopped early (`until_decided` with items not asked)."""
    root = Path(prepared_dir) / "arms"
    names = []
    for path in sorted(root.glob("*/arm.json")) if root.is_dir() else []:
        doc = _json(path) or {}
        rec = doc.get("until_decided")
        if isinstance(rec, dict) and rec.get("unasked"):
            names.append(path.parent.name)
    return names


def side_arms(prepared_dir: Path) -> set[str]:
    """Arms the main comparison leaves out unless named: a curve's, a label-order study's, and
    those that stopped early."""
    from ..sensitivity import sensitivity_docs

    out = set(stopped_early_names(prepared_dir))
    for sdoc in sensitivity_docs(prepared_dir):
        out |= set(sdoc.get("arms") or [])
    for doc in curve_docs(prepared_dir):
        out |= {p.get("arm") for p in doc["points"] if p.get("arm")}
    return out


def section(prepared_dir: Path, opts: Any) -> dict[str, Any]:
    """metrics.json's `decide` block: the curves, and the arms that stopped early with what
    they saved (their items not asked, at the cost per image of those they answered)."""
    from ..cost import arm_cost
    from ..pricing import load_pricing
    from .build import _arm_block, _usage
    from .load import align, load_arm

    curves = []
    for doc in curve_docs(prepared_dir):
        entry = {k: doc.get(k) for k in ("name", "points", "fit", "summary", "model", "interval")}
        entry["base_model"] = (doc.get("options") or {}).get("model")
        entry["png"] = str(Path(doc["dir"]) / "curve.png")
        curves.append(entry)
    stopped = []
    table = load_pricing(getattr(opts, "pricing", None))
    for name in stopped_early_names(prepared_dir):
        arm = load_arm(prepared_dir, name)
        rec = dict(arm.meta["until_decided"])
        al = align(prepared_dir, [arm])
        block = _arm_block(arm, al)
        cost = arm_cost(_usage(arm, block, opts), table, opts.serving)
        per_image = None if cost.get("error") else cost.get("per_image")
        rec |= {
            "arm": name,
            "model": arm.model,
            "emulated": bool(arm.meta.get("emulated")),
            "per_image_usd": per_image,
            "saved_usd": None if per_image is None else per_image * int(rec["unasked"]),
            "spent_usd": None if per_image is None else per_image * int(rec["answered"]),
        }
        stopped.append(rec)
    from ..sensitivity import sensitivity_docs

    orders = [
        {k: d.get(k) for k in ("name", "model", "summary", "accuracy", "arms", "items",
                                "all_orders_agree", "mean_pairwise_kappa", "emulated")}
        for d in sensitivity_docs(prepared_dir)
    ]  # fmt: skip
    return {"curves": curves, "stopped_early": stopped, "label_orders": orders}


def sentences(block: dict[str, Any]) -> list[str]:
    """One sentence per curve and per arm that stopped early (what the report prints)."""
    out = []
    for c in block.get("curves", []):
        out.append(f"Learning curve {c['name']} ({c.get('base_model')}): {c['summary']}.")
    for o in block.get("label_orders", []):
        emulated = " (emulated)" if o.get("emulated") else ""
        out.append(f"Label order, {o['name']} ({o['model']}{emulated}): {o['summary']}.")
    for s in block.get("stopped_early", []):
        emulated = " (emulated)" if s.get("emulated") else ""
        if s.get("decision"):
            lo, hi = s["interval"]
            money = (
                f", saving about ${s['saved_usd']:,.2f} (${s['per_image_usd']:.5f} an image)"
                if s.get("saved_usd") is not None
                else ""
            )
            out.append(
                f"{s['arm']}{emulated} stopped after {s['answered']} of {s['items']} test items: "
                f"{s['decision']} than {s['against']} ({100 * lo:+.1f} to {100 * hi:+.1f} pp, an "
                f"anytime-valid {1 - s['alpha']:.0%} interval, decided at item {s['needed']}); "
                f"{s['unasked']} items were never asked{money}."
            )
        else:
            out.append(
                f"{s['arm']}{emulated} answered {s['answered']} of {s['items']} items without a "
                "decision yet (run it again with --until-decided to go on)."
            )
    return out


__all__ = ["curve_docs", "section", "sentences", "side_arms", "stopped_early_names"]
