"""How much of a zero-shot number is the prompt's luck: the same model on the same seeded
subsample of the test split, asked with the label list in K+1 orders (as prepared, then shuffled
with seeds 1..K), and how much its answers and its accuracy move.

Each order is an ordinary arm (`NAME.order0` ... `NAME.orderK`: resumable, recorded), reported
on its own: accuracy per order and its spread, the share of items answered the same in every
order, and the mean pairwise Cohen's kappa between orders (scikit-learn's, over the answers,
an invalid answer counting as one more category).
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .arms import arm_dir, check_arm_name
from .classify import ClassifyOptions, classify
from .dataset.manifest import load_sample
from .errors import UserError
from .files import write_text_atomic
from .models import parse_model
from .store import Store

SENSITIVITY_DIR = "sensitivity"
INVALID = "\x00invalid"


class SensitivityOptions(BaseModel):
    """A label-order study's settings; saved in its JSON."""

    classify: ClassifyOptions
    """The zero-shot arm as it would be classified (model, prompt, answer, runner...); its
    `name` is the study's, its arms are NAME.orderK."""
    orders: int = Field(3, ge=1, le=50)
    """Shuffled orders besides the prepared one."""
    items: int = Field(100, ge=2)
    """Test items in the seeded subsample (all of them when the split is smaller)."""
    seed: int = 0


class SensitivityResult(BaseModel):
    path: Path
    doc: dict[str, Any]


def run_sensitivity(
    prepared_dir: Path,
    options: SensitivityOptions,
    on_status: Callable[[str], None] | None = None,
) -> SensitivityResult:
    """Classify the subsample in every order, then measure agreement and spread."""
    from sklearn.metrics import cohen_kappa_score

    prepared_dir = Path(prepared_dir)
    name = check_arm_name(options.classify.name)
    ref = parse_model(options.classify.model)
    if ref.provider not in ("openai", "azure", "hf") or ref.name.startswith("arm:"):
        raise UserError(
            f"a label order is a prompt's: {ref} does not list the labels to the model "
            "(zero-shot openai/, azure/ and hf/ models do)"
        )
    say = on_status or (lambda _m: None)
    test = load_sample(prepared_dir).split(options.classify.split)
    ids = sorted(r.id for r in test)
    random.Random(options.seed).shuffle(ids)
    ids = sorted(ids[: options.items])
    runs = []
    for k in range(options.orders + 1):
        arm = f"{name}.order{k}"
        opts = options.classify.model_copy(
            update={"name": arm, "label_order": k or None, "item_ids": ids}
        )
        result = classify(prepared_dir, opts)
        acc = result.totals["accuracy"]
        say(f"order {k}: accuracy {acc:.2%}" if acc is not None else f"order {k}: no answers")
        runs.append(arm)
    answers: dict[str, dict[str, str]] = {}
    correct: dict[str, list[bool]] = {}
    with Store.for_dir(prepared_dir) as store:
        for arm in runs:
            preds = {p.item_id: p for p in store.predictions(arm) if p.result.error is None}
            answers[arm] = {
                i: (preds[i].result.prediction if preds[i].result.valid else None) or INVALID
                for i in ids
                if i in preds
            }
            correct[arm] = [preds[i].correct for i in ids if i in preds]
    common = [i for i in ids if all(i in answers[a] for a in runs)]
    accuracy = {a: sum(c) / len(c) if c else None for a, c in correct.items()}
    values = [v for v in accuracy.values() if v is not None]
    same = sum(len({answers[a][i] for a in runs}) == 1 for i in common)
    kappas = [
        float(cohen_kappa_score([answers[a][i] for i in common], [answers[b][i] for i in common]))
        for a, b in itertools.combinations(runs, 2)
    ]
    doc = {
        "model": options.classify.model,
        "name": name,
        "arms": runs,
        "items": len(ids),
        "compared_items": len(common),
        "seed": options.seed,
        "accuracy": accuracy,
        "accuracy_min": min(values) if values else None,
        "accuracy_max": max(values) if values else None,
        "accuracy_sd": statistics.stdev(values) if len(values) > 1 else None,
        "all_orders_agree": same / len(common) if common else None,
        "mean_pairwise_kappa": statistics.fmean(kappas) if kappas else None,
        "method": "label list shuffled with seeds 1..K (order 0: as prepared); agreement: share "
        "of items with one answer in every order, and mean pairwise Cohen's kappa (scikit-learn)",
        "emulated": any(
            json.loads((arm_dir(prepared_dir, a) / "arm.json").read_text("utf-8")).get("emulated")
            for a in runs
        ),
    }
    doc["summary"] = summary(doc)
    path = prepared_dir / SENSITIVITY_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return SensitivityResult(path=path, doc=doc)


def summary(doc: dict[str, Any]) -> str:
    """One sentence: the spread of accuracy and how often the orders agree."""
    if doc["accuracy_min"] is None:
        return "no answers"
    n = len(doc["arms"])
    sd = "" if doc["accuracy_sd"] is None else f", sd {100 * doc['accuracy_sd']:.1f} pp"
    agree = doc["all_orders_agree"] or 0.0
    kappa = doc["mean_pairwise_kappa"]
    return (
        f"accuracy {doc['accuracy_min']:.1%} to {doc['accuracy_max']:.1%} over {n} label orders"
        f"{sd}; every order gives the same answer on {agree:.0%} of {doc['compared_items']} items"
        + ("" if kappa is None else f" (mean pairwise kappa {kappa:.2f})")
    )


def sensitivity_docs(prepared_dir: Path) -> list[dict[str, Any]]:
    root = Path(prepared_dir) / SENSITIVITY_DIR
    out = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


__all__ = ["SensitivityOptions", "run_sensitivity", "sensitivity_docs", "summary"]
