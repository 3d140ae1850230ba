"""Replay measured latencies: each chat request waits a deterministically drawn sample."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

from ..errors import UserError
from . import draw

LATENCY_COLUMN = "latency_ms"
MODEL_COLUMN = "model"
BUILTIN_SEED_STUDY = "seed-study"
"""`--latency-profile seed-study`: the original study's 2 x 600 measured requests (shipped)."""
FT_ROW_NAMES = frozenset({"fine_tuned", "fine-tuned", "ft", "finetuned"})
"""Values of the `model` column that mark a fine-tuned model's rows (the study wrote `fine_tuned`)."""


class LatencyProfile:
    """Latency samples (ms) for base and fine-tuned models, from a CSV such as the study's
    per_request_latencies.csv. Without a `model` column, or without rows of a kind, both kinds
    draw from all rows.
    """

    def __init__(self, base_ms: list[float], ft_ms: list[float], scale: float = 1.0) -> None:
        if not base_ms and not ft_ms:
            raise ValueError("a latency profile needs at least one sample")
        self.base_ms = base_ms or ft_ms
        self.ft_ms = ft_ms or base_ms
        self.scale = scale

    @classmethod
    def from_csv(cls, path: Path, scale: float = 1.0) -> LatencyProfile:
        """Read the CSV; a missing file or column is one UserError line."""
        path = Path(path)
        if str(path) == BUILTIN_SEED_STUDY and not path.exists():
            path = Path(str(resources.files("vlm_classify") / "data" / "seed-study-latencies.csv"))
        if not path.is_file():
            raise UserError(
                f"--latency-profile: {path} not found; pass a CSV with a {LATENCY_COLUMN} column"
            )
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if LATENCY_COLUMN not in fields:
                raise UserError(
                    f"--latency-profile: {path} has no {LATENCY_COLUMN} column (columns: {', '.join(fields)})"
                )
            base: list[float] = []
            ft: list[float] = []
            everything: list[float] = []
            for row in reader:
                if (row.get("error") or "").strip():
                    continue  # a failed request's time is not a latency sample
                try:
                    ms = float(row[LATENCY_COLUMN])
                except (TypeError, ValueError):
                    continue
                if ms < 0:
                    continue
                everything.append(ms)
                kind = (row.get(MODEL_COLUMN) or "").strip().lower()
                (ft if kind in FT_ROW_NAMES else base).append(ms)
        if not everything:
            raise UserError(f"--latency-profile: {path} has no numeric {LATENCY_COLUMN} values")
        if MODEL_COLUMN not in fields:
            base, ft = everything, everything
        return cls(base, ft, scale)

    def seconds(self, fine_tuned: bool, *key: object) -> float:
        """The wait for one request, in seconds: a sample fixed by `key`, times the scale."""
        samples = self.ft_ms if fine_tuned else self.base_ms
        return samples[draw.index(len(samples), "latency", fine_tuned, *key)] * self.scale / 1000.0
