"""Read the arms a report compares (`DIR/arms/*/predictions.csv`, `arm.json`, fine-tuning and
latency files) and align them on the same test items."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dataset.manifest import ManifestRow, Sample, load_sample
from ..errors import DataError, UserError
from ..metrics import INVALID
from ..models import is_fine_tuned_name

REQUIRED = ("id", "label", "prediction", "valid", "error")


@dataclass
class Arm:
    """One evaluated arm as recorded on disk."""

    name: str
    path: Path
    meta: dict[str, Any]
    rows: dict[str, dict[str, str]]
    """predictions.csv rows by id, in file order."""
    finetune: dict[str, Any] | None = None
    """The finetune.json of the job that made this arm's model (with `_dir`), if recorded."""
    labels: frozenset[str] | None = None
    """The label list (set by `align`): a prediction outside it is invalid, whatever `valid` says."""

    @property
    def model(self) -> str:
        return str(self.meta.get("model") or "")

    @property
    def mode(self) -> str:
        return str(self.meta.get("mode") or "realtime")

    @property
    def emulated(self) -> bool:
        return bool(self.meta.get("emulated"))

    @property
    def fine_tuned(self) -> bool:
        """A fine-tune's evaluation (arm.json names its job), or as arm.json records it; for an
        arm recorded before it did, a model id that says it is fine-tuned (`ft:...`)."""
        if self.meta.get("fine_tune"):
            return True
        if "fine_tuned" in self.meta:
            return bool(self.meta["fine_tuned"])
        return is_fine_tuned_name(self.model.partition("/")[2])

    @property
    def sample(self) -> str | None:
        """The identity of the sample the arm ran on; None for an arm recorded before arms were
        bound to their sample (its items are then checked by id and label only)."""
        sample = self.meta.get("sample")
        return str(sample["id"]) if isinstance(sample, dict) and sample.get("id") else None

    @property
    def split(self) -> str:
        return str(self.meta.get("split") or self.meta.get("settings", {}).get("split") or "test")

    @property
    def display(self) -> str:
        """The arm's name as every table, plot and sentence shows it."""
        return f"{self.name} (emulated)" if self.emulated else self.name

    def answered(self, item_id: str) -> bool:
        return not (self.rows[item_id].get("error") or "").strip()

    def valid(self, item_id: str) -> bool:
        """The answer was one of the labels (`valid` = 1 and, once aligned, in the label list)."""
        r = self.rows[item_id]
        prediction = r.get("prediction")
        if r.get("valid") != "1" or not prediction:
            return False
        return self.labels is None or prediction in self.labels

    def predicted(self, item_id: str) -> str:
        """The predicted label, or INVALID when the answer was not a label."""
        return self.rows[item_id]["prediction"] if self.valid(item_id) else INVALID

    def scores(self, item_id: str) -> dict[str, float] | None:
        raw = self.rows[item_id].get("scores")
        return json.loads(raw) if raw else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path} ({e}): rerun the command that wrote it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object: rerun the command that wrote it")
    return data


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def available_arms(prepared_dir: Path) -> list[str]:
    """Arms with predictions under `DIR/arms/`, sorted by name."""
    root = Path(prepared_dir) / "arms"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "predictions.csv").is_file())


def load_arm(prepared_dir: Path, name: str) -> Arm:
    """Read one arm; a missing arm is a UserError naming the arms that exist."""
    path = Path(prepared_dir) / "arms" / name
    pred = path / "predictions.csv"
    if not pred.is_file():
        have = ", ".join(available_arms(prepared_dir)) or "none"
        raise UserError(
            f"no arm {name!r} in {prepared_dir}/arms (arms with predictions: {have}): "
            "run `vlm-classify classify` for it or fix --arms/--baseline"
        )
    rows = _read_csv(pred)
    if rows:
        missing = [c for c in REQUIRED if c not in rows[0]]
        if missing:
            raise DataError(f"{pred} lacks columns {missing}: rerun `vlm-classify classify`")
    meta: dict[str, Any] = {"name": name}
    if (path / "arm.json").is_file():
        meta = _read_json(path / "arm.json")
    arm = Arm(name, path, meta, {r["id"]: r for r in rows})
    ft = meta.get("fine_tune")
    job = ft.get("job_arm") if isinstance(ft, dict) else None
    if job:
        ft_path = Path(prepared_dir) / "arms" / str(job) / "finetune.json"
        if ft_path.is_file():
            arm.finetune = _read_json(ft_path) | {"_dir": str(ft_path.parent)}
    return arm


@dataclass
class LatencyStudy:
    """A `vlm-classify latency` run: its levels (latency.csv) and raw samples."""

    name: str
    model: str
    emulated: bool
    levels: list[dict[str, str]]
    samples: list[dict[str, str]] = field(default_factory=list)

    @property
    def display(self) -> str:
        return f"{self.name} (emulated)" if self.emulated else self.name


def latency_studies(prepared_dir: Path, names: list[str] | None = None) -> list[LatencyStudy]:
    """The latency studies under `DIR/arms/` (only those of `names` when given), by name."""
    root = Path(prepared_dir) / "arms"
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        if not (path / "latency.csv").is_file() or (names is not None and path.name not in names):
            continue
        levels = _read_csv(path / "latency.csv")
        samples_path = path / "latency-samples.csv"
        samples = _read_csv(samples_path) if samples_path.is_file() else []
        model = levels[0].get("model", "") if levels else ""
        emulated = any(r.get("emulated") in ("1", "True", "true") for r in levels)
        out.append(LatencyStudy(path.name, model, emulated, levels, samples))
    return out


@dataclass
class Aligned:
    """Arms on the same test items; `ids` are the items every arm answered, in manifest order."""

    arms: list[Arm]
    ids: list[str]
    truth: list[str]
    manifest: dict[str, ManifestRow]
    labels: list[str]
    excluded: list[dict[str, Any]]
    """Items left out because some arm has no answer (an error), with those arms' names."""


def align(prepared_dir: Path, arms: list[Arm]) -> Aligned:
    """Check the arms were run on the same items and keep those every arm answered."""
    if not arms:
        raise UserError(
            f"no arms to report in {prepared_dir}/arms: run `vlm-classify classify` first"
        )
    first = arms[0]
    for arm in arms[1:]:
        if set(arm.rows) != set(first.rows):
            only_a = len(set(first.rows) - set(arm.rows))
            only_b = len(set(arm.rows) - set(first.rows))
            raise UserError(
                f"arms {first.name!r} ({len(first.rows)} items) and {arm.name!r} "
                f"({len(arm.rows)} items) were run on different test ids ({only_a} only in the "
                f"first, {only_b} only in the second): rerun them on the same --split and "
                "--limit, or choose arms with --arms"
            )
    sample = load_sample(prepared_dir)
    manifest = {r.id: r for r in sample.rows}
    for arm in arms:
        _check_sample(arm, sample, manifest)
    order = [r.id for r in manifest.values() if r.id in first.rows]
    ids, excluded = [], []
    for i in order:
        failed = [a.name for a in arms if not a.answered(i)]
        if failed:
            excluded.append({"id": i, "arms": failed})
        else:
            ids.append(i)
    labels = sample.labels
    known = frozenset(labels) | {r.label for r in manifest.values()}
    for arm in arms:
        arm.labels = known
    return Aligned(arms, ids, [manifest[i].label for i in ids], manifest, labels, excluded)


def _check_sample(arm: Arm, sample: Sample, manifest: dict[str, ManifestRow]) -> None:
    """Refuse an arm recorded for another sample, or holding an item that is not, with the same
    label, in its split of the current sample: it would be scored on the wrong items."""
    fix = (
        f"rerun it on this sample with `vlm-classify classify {sample.dir} --name {arm.name} "
        "--reset` (same --model and settings), or leave it out with --arms"
    )
    if arm.split != "test":
        raise UserError(
            f"arm {arm.name!r} was run on the {arm.split} split: the report scores test items "
            f"only (a fine-tune scored on its own training items says nothing); run it with "
            f"`vlm-classify classify {sample.dir} --name NAME --split test`, or leave it out "
            "with --arms"
        )
    if arm.sample is not None and arm.sample != sample.identity:
        raise UserError(
            f"arm {arm.name!r} was recorded for another sample (sample {arm.sample[:12]}; "
            f"{sample.dir} now holds sample {sample.short_id}, prepared again since): {fix}"
        )
    stray = [
        i
        for i, r in arm.rows.items()
        if i not in manifest or manifest[i].split != arm.split or manifest[i].label != r["label"]
    ]
    if stray:
        raise UserError(
            f"arm {arm.name!r} holds {len(stray)} item(s) that are not in the {arm.split} split "
            f"of {sample.dir} as it is now (e.g. {stray[0]!r}): it was run on an earlier "
            f"preparation; {fix}"
        )


def select_arms(
    prepared_dir: Path, names: list[str] | None, baseline: str | None
) -> tuple[list[Arm], str]:
    """The arms to report (baseline first) and the baseline's name.

    Without --baseline the first arm that is not fine-tuned is the baseline (else the first).
    """
    prepared_dir = Path(prepared_dir)
    if not prepared_dir.is_dir():
        raise UserError(
            f"{prepared_dir} is not a directory: pass the prepared folder that holds arms/"
        )
    if names:
        chosen = names
    else:  # a learning curve's arms and those that stopped early are reported on their own
        from .decide import side_arms

        side = side_arms(prepared_dir)
        chosen = [a for a in available_arms(prepared_dir) if a not in side]
    if not chosen:
        raise UserError(
            f"no arms with predictions in {prepared_dir}/arms: run `vlm-classify classify` first"
        )
    if len(set(chosen)) != len(chosen):
        raise UserError("--arms names an arm twice: list each arm once")
    if baseline is not None and baseline not in chosen:
        if names:
            raise UserError(f"--baseline {baseline!r} is not among --arms: add it to --arms")
        load_arm(prepared_dir, baseline)  # raises: no such arm
    arms = [load_arm(prepared_dir, n) for n in chosen]
    if baseline is None:
        baseline = next((a.name for a in arms if not a.fine_tuned), arms[0].name)
    arms.sort(key=lambda a: a.name != baseline)
    return arms, baseline
