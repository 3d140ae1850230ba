"""An arm's files on disk: `DIR/arms/ARM/predictions.csv` and `arm.json`, written from the store."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import atomic_open, write_text_atomic
from .store import Store

PREDICTION_FIELDS = [
    "id",
    "label",
    "prediction",
    "correct",
    "valid",
    "confidence",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "attempts",
    "mode",
    "emulated",
    "error",
    "raw_answer",
    "scores",
]

FINETUNE_JSON = "finetune.json"
"""A training job's record, `DIR/arms/JOB/finetune.json`: any provider's, cloud or local."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_arm_name(name: str) -> str:
    """Arm names become folder names: letters, digits, `.`, `_`, `-`."""
    if not _NAME.match(name):
        raise UserError(
            f"--name {name!r}: use letters, digits, '.', '_' or '-' (at most 64), e.g. zero-shot"
        )
    return name


def arm_dir(prepared_dir: Path, name: str) -> Path:
    return Path(prepared_dir) / "arms" / check_arm_name(name)


def write_arm_files(
    prepared_dir: Path, store: Store, name: str, extra: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Write predictions.csv and arm.json for `name`; return the folder and the totals.

    `extra["emulated"]` marks every row of predictions.csv: a number from the emulator must say
    so wherever it goes. Accuracy is over the answered items: a failed request is not a wrong
    answer, and the errors are counted apart.
    """
    out = arm_dir(prepared_dir, name)
    emulated = int(bool(extra.get("emulated")))
    out.mkdir(parents=True, exist_ok=True)
    rows = store.predictions(name)
    n = len(rows)
    answered = [r for r in rows if r.result.error is None]
    correct = sum(r.correct for r in answered)
    totals = {
        "items": n,
        "answered": len(answered),
        "errors": n - len(answered),
        "valid": sum(r.result.valid for r in rows),
        "invalid": sum(1 for r in answered if not r.result.valid),
        "correct": correct,
        "accuracy": (correct / len(answered)) if answered else None,
        "prompt_tokens": sum(r.result.usage.prompt_tokens for r in rows),
        "completion_tokens": sum(r.result.usage.completion_tokens for r in rows),
        "attempts": sum(r.attempts for r in rows),
    }
    arm = store.arm(name) or {}
    modes = {r.mode for r in rows}
    doc = {
        "name": name,
        "model": arm.get("model"),
        # What ran, not what was asked: an Azure fine-tuned deployment asked for in batch runs
        # realtime, and so do failed Batch lines (each row keeps its own mode).
        "mode": "batch"
        if "batch" in modes
        else (modes.pop() if len(modes) == 1 else arm.get("mode")),
        "settings": arm.get("settings", {}),
        "totals": totals,
        **extra,
    }
    write_text_atomic(out / "arm.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    # predictions.csv last: it is what marks the folder an arm (`report` looks for it), so a
    # crash before it never leaves an arm without its arm.json (which says `emulated`).
    with atomic_open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(PREDICTION_FIELDS)
        for r in rows:
            p = r.result
            w.writerow(
                [
                    r.item_id,
                    r.label,
                    p.prediction or "",
                    int(r.correct),
                    int(p.valid),
                    "" if p.confidence is None else f"{p.confidence:.6f}",
                    "" if p.latency_ms is None else f"{p.latency_ms:.2f}",
                    p.usage.prompt_tokens,
                    p.usage.completion_tokens,
                    r.attempts,
                    r.mode,
                    emulated,
                    p.error or "",
                    p.raw_answer,
                    "" if p.scores is None else json.dumps(p.scores, separators=(",", ":")),
                ]
            )
    return out, totals


def read_job(out: Path) -> dict[str, Any]:
    """A job's finetune.json in arm folder `out` ({} when there is none yet, or it is unreadable)."""
    try:
        return dict(json.loads((Path(out) / FINETUNE_JSON).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def write_job(out: Path, record: dict[str, Any]) -> None:
    """Write a job's finetune.json whole or not at all (a temp file, then a rename)."""
    write_text_atomic(
        Path(out) / FINETUNE_JSON, json.dumps(record, indent=2, sort_keys=True) + "\n"
    )


def find_fine_tune(prepared_dir: Path, model: str) -> dict[str, Any] | None:
    """The finetune.json (plus its arm name) whose fine-tuned model, or one of its Azure
    deployments, is `model` (`provider/name`), of the same provider: an OpenAI id and an Azure
    deployment of the same name are different models. A local model named by its folder
    (`DIR/arms/JOB/model`, or the arm's own folder) is its job's too."""
    provider, _, name = model.partition("/")
    folder = Path(name).expanduser()
    local = folder.resolve() if name and folder.is_dir() else None
    for path in sorted((Path(prepared_dir) / "arms").glob(f"*/{FINETUNE_JSON}")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        base = str(record.get("base_model") or "")
        if not name or base.partition("/")[0] != provider:
            continue
        tuned = str(record.get("fine_tuned_model") or "")
        # The fine-tuning API records a bare id (`ft:...`); local jobs record a model string.
        full = tuned if tuned.startswith(f"{provider}/") else f"{provider}/{tuned}"
        deployments = {f"{provider}/{d}" for d in record.get("deployments", [])}
        job_dir = path.parent.resolve()
        if (
            (tuned and model == full)
            or model in deployments
            or (local is not None and local in (job_dir, job_dir / "model"))
        ):
            return {"job_arm": path.parent.name, **record}
    return None
