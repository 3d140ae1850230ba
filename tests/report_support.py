"""Arms with a known ground truth, written straight to disk (the file contract of classify and
finetune), for the report tests."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_classify.arms import PREDICTION_FIELDS
from vlm_classify.dataset.manifest import load_sample, read_labels, read_manifest

FT_MODEL = "openai/ft:gpt-4o-2024-08-06:acme:dogs:abc123"
BASE_MODEL = "openai/gpt-4o-2024-08-06"


def write_arm(
    prepared: Path,
    name: str,
    answer: Callable[[int, str, list[str]], str | None],
    *,
    model: str = BASE_MODEL,
    mode: str = "realtime",
    emulated: bool = False,
    error: Callable[[int], bool] = lambda i: False,
    prompt_tokens: int = 600,
    completion_tokens: int = 6,
    extra: dict[str, Any] | None = None,
    ids: list[str] | None = None,
    legacy: bool = False,
    scores: Callable[[int, str, list[str]], dict[str, float]] | None = None,
) -> Path:
    """predictions.csv and arm.json for the test split; `answer(i, label, labels)` gives the
    prediction (None: an invalid answer), `error(i)` marks failed requests. The arm is bound to
    the current sample, unless `legacy` (recorded before arms recorded their sample)."""
    labels = read_labels(prepared)
    rows = [r for r in read_manifest(prepared) if r.split == "test"]
    if ids is not None:
        rows = [r for r in rows if r.id in ids]
    out = prepared / "arms" / name
    out.mkdir(parents=True, exist_ok=True)
    correct_n = 0
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=PREDICTION_FIELDS, lineterminator="\n")
        w.writeheader()
        for i, r in enumerate(rows):
            failed = error(i)
            pred = None if failed else answer(i, r.label, labels)
            correct = int(pred == r.label)
            correct_n += correct
            w.writerow(
                {
                    "id": r.id,
                    "label": r.label,
                    "prediction": pred or "",
                    "correct": correct,
                    "valid": int(pred is not None),
                    "confidence": "" if pred is None else f"{0.5 + (i % 5) / 10:.6f}",
                    "latency_ms": "" if mode == "batch" else f"{1000 + 37 * (i % 11):.2f}",
                    "prompt_tokens": 0 if failed else prompt_tokens,
                    "completion_tokens": 0 if failed else completion_tokens,
                    "attempts": 1,
                    "mode": mode,
                    "emulated": int(emulated),
                    "error": "ItemError: refused" if failed else "",
                    "raw_answer": pred or ("" if failed else "not sure"),
                    "scores": json.dumps(scores(i, r.label, labels)) if scores else "",
                }
            )
    doc = {
        "name": name,
        "model": model,
        "mode": mode,
        "settings": {"split": "test", "prompt": "full", "detail": "low"},
        "totals": {"items": len(rows), "correct": correct_n},
        "emulated": emulated,
        "provider": model.partition("/")[0],
        **({} if legacy else {"sample": {"id": load_sample(prepared).identity}}),
        **(extra or {}),
    }
    (out / "arm.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return out


def write_finetune_job(
    prepared: Path, job_arm: str, trained_tokens: int, base_model: str = BASE_MODEL
) -> Path:
    """A finetune.json (and its results file) as `vlm-classify finetune` records them."""
    out = prepared / "arms" / job_arm
    out.mkdir(parents=True, exist_ok=True)
    lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
    for step in range(1, 21):
        valid = f"{2.0 / step:.4f},{min(1, 0.4 + step / 30):.4f}" if step % 5 == 0 else ","
        lines.append(f"{step},{3.0 / step:.4f},{min(1, 0.3 + step / 25):.4f},{valid}")
    (out / "step_metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    doc = {
        "base_model": base_model,
        "fine_tuned_model": FT_MODEL.partition("/")[2],
        "trained_tokens": trained_tokens,
        "hyperparameters": {"n_epochs": 2},
        "emulated": False,
        "results_csv": "step_metrics.csv",
    }
    (out / "finetune.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return out


def ft_extra(job_arm: str, trained_tokens: int) -> dict[str, Any]:
    return {
        "fine_tune": {
            "job_arm": job_arm,
            "base_model": BASE_MODEL,
            "trained_tokens": trained_tokens,
        }
    }


def wrong(label: str, labels: list[str], shift: int = 1) -> str:
    return labels[(labels.index(label) + shift) % len(labels)]
