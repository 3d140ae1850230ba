"""`export`: fine-tuning files and Batch API input for a prepared directory.

Writes `DIR/jsonl/train.jsonl`, `val.jsonl` (chat fine-tuning format), `test-batch.jsonl`
(Batch API input, split into `test-batch-001.jsonl`, ... when over the per-file limits) and
`export.json`. Every documented limit is checked before anything is written; files are written
line by line into a staging folder and moved into place only when all of them are complete.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, Field

from ... import __version__
from ...dataset.manifest import ManifestRow, read_labels, read_manifest
from ...errors import DataError, UserError
from ...files import fsync_tree
from ...models import OPENAI_PROVIDERS, parse_model
from ...prompts import PromptStyle, system_prompt
from .wire import (
    AZURE_CHAT_URL,
    CHAT_URL,
    AnswerMode,
    Detail,
    batch_line,
    batch_line_errors,
    chat_body,
    classification_messages,
    data_url_prefix,
    dumps_line,
    finetune_line,
    finetune_line_errors,
    sniff_image_mime,
)

JSONL_DIR = "jsonl"
EXPORT_JSON = "export.json"

_IMAGE_MARK = "@@IMAGE_BASE64@@"  # '@' is not in the base64 alphabet, so it cannot clash with data
_STAGING = ".export-tmp"

FileKind = Literal["train", "val", "test-batch"]


class ExportOptions(BaseModel):
    """What to export and how the requests are phrased."""

    model: str
    """`openai/MODEL` or `azure/DEPLOYMENT`: the Batch lines name MODEL (or the deployment)."""
    prompt: PromptStyle = "full"
    """System prompt of the Batch requests: `full` lists every label (the study), `short` does not."""
    training_prompt: PromptStyle | None = None
    """System prompt of the fine-tuning examples; default: the same as `prompt`."""
    detail: Detail = "low"
    """Image detail for every request: `low` (85 tokens an image, the study's choice), `high`, `auto`."""
    answer: AnswerMode = "enum"
    """Batch answers: `enum` (structured output, one of the labels) or `text` (free text)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """`max_completion_tokens` of each Batch request; default 50 for `enum`, 20 for `text`."""
    temperature: float = Field(default=0.0, ge=0, le=2)
    """Sampling temperature of each Batch request."""
    logprobs: bool = True
    """Ask the Batch requests for token log probabilities (a confidence signal), as `classify` does."""
    train_ids: frozenset[str] | None = None
    """Only these train items in the fine-tuning file (a learning curve's subset); None: all."""


class ExportLimits(BaseModel):
    """Documented OpenAI limits (decimal MB, the conservative reading). Tests shrink them."""

    max_image_bytes: int = 10_000_000
    """Vision fine-tuning: each image at most 10 MB (also applied to the Batch input)."""
    min_train_examples: int = 10
    """Fine-tuning needs at least 10 training examples."""
    max_ft_examples: int = 50_000
    """Vision fine-tuning: at most 50,000 examples with images per file."""
    max_ft_file_bytes: int = 512_000_000
    """Files API: 512 MB a file. Larger fine-tuning files need the Uploads API (a warning)."""
    max_upload_bytes: int = 8_000_000_000
    """Uploads API: 8 GB in all; a fine-tuning file beyond cannot be uploaded at all."""
    max_batch_lines: int = 50_000
    """Batch API: at most 50,000 requests per input file."""
    max_batch_bytes: int = 200_000_000
    """Batch API: at most 200 MB per input file."""


class ExportedFile(BaseModel):
    """One written JSONL file."""

    kind: FileKind
    path: Path
    lines: int
    bytes: int
    sha256: str


class ExportResult(BaseModel):
    """What `export` wrote, and anything the user should know about it."""

    out_dir: Path
    files: list[ExportedFile]
    summary_path: Path
    """`DIR/jsonl/export.json`: settings and counts."""
    warnings: list[str] = Field(default_factory=list)


@dataclass
class _Item:
    row: ManifestRow
    path: Path
    mime: str
    size: int


@dataclass
class _Plan:
    kind: FileKind
    name: str
    items: list[_Item]
    bytes: int


class _Writer:
    """Turns manifest rows into lines: a small skeleton JSON, with the image spliced in on write."""

    def __init__(self, options: ExportOptions, labels: list[str]) -> None:
        self.options = options
        self.labels = labels
        ref = parse_model(options.model, OPENAI_PROVIDERS)
        self.provider, self.model = ref.provider, ref.name
        self.url = AZURE_CHAT_URL if self.provider == "azure" else CHAT_URL
        self.system = system_prompt(labels, options.prompt)
        self.training_system = system_prompt(labels, options.training_prompt or options.prompt)
        self._checked: set[str] = set()

    def skeleton(self, kind: FileKind, item: _Item) -> dict[str, Any]:
        """The line, with `data:<mime>;base64,@@IMAGE_BASE64@@` where the image goes."""
        url = data_url_prefix(item.mime) + _IMAGE_MARK
        if kind != "test-batch":
            messages = classification_messages(self.training_system, url, self.options.detail)
            return finetune_line(messages, item.row.label)
        messages = classification_messages(self.system, url, self.options.detail)
        body = chat_body(
            self.model,
            messages,
            answer=self.options.answer,
            labels=self.labels,
            max_tokens=self.options.max_tokens,
            temperature=self.options.temperature,
            logprobs=self.options.logprobs,
        )
        return batch_line(item.row.id, body, url=self.url)

    def halves(self, kind: FileKind, item: _Item) -> tuple[bytes, bytes]:
        """The encoded line before and after the base64 text of the image."""
        text = dumps_line(self.skeleton(kind, item))
        before, sep, after = text.partition(_IMAGE_MARK)
        if not sep or _IMAGE_MARK in after:
            raise DataError(f"{item.row.id}: a label or prompt contains {_IMAGE_MARK!r}")
        return before.encode("utf-8"), after.encode("utf-8")

    def line_bytes(self, kind: FileKind, item: _Item) -> int:
        before, after = self.halves(kind, item)
        return len(before) + len(after) + 4 * ((item.size + 2) // 3)

    def check(self, kind: FileKind, item: _Item) -> None:
        """Validate the line against the spec.

        The image URL, custom_id and label are plain strings in the spec (no pattern, no length;
        `format: uri` is not asserted), so a line is valid exactly when its skeleton with any
        other string there is. Skeletons are validated once per distinct text (one per file for
        Batch lines, one per label for fine-tuning lines) instead of ~2 ms per line.
        """
        line = self.skeleton(kind, item)
        if kind == "test-batch":
            if not isinstance(line["custom_id"], str) or not line["custom_id"]:
                raise DataError(f"manifest id {item.row.id!r} cannot be a Batch custom_id")
            line = {**line, "custom_id": "_"}
        key = kind + dumps_line(line)
        if key in self._checked:
            return
        if kind == "test-batch":
            errors = batch_line_errors(line)
        else:
            errors = finetune_line_errors(line, model=self.model)
        if errors:
            raise DataError(f"{kind} line for {item.row.id} breaks the OpenAI spec: {errors[0]}")
        self._checked.add(key)


def export(
    prepared_dir: Path,
    options: ExportOptions,
    limits: ExportLimits | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the fine-tuning files and the Batch input of a prepared directory into `DIR/jsonl/`.

    All limits are checked first; nothing in `DIR/jsonl/` changes unless every file is written.
    `progress` is called with the number of lines written after each line.
    """
    limits = limits or ExportLimits()
    prepared_dir = Path(prepared_dir)
    rows = read_manifest(prepared_dir)
    labels = read_labels(prepared_dir)
    writer = _Writer(options, labels)  # checks the model string
    warnings: list[str] = []

    _check_rows(rows, labels)
    by_split: dict[str, list[_Item]] = {"train": [], "val": [], "test": []}
    for row in rows:
        if (
            row.split == "train"
            and options.train_ids is not None
            and row.id not in options.train_ids
        ):
            continue
        by_split[row.split].append(_inspect(prepared_dir, row, limits))

    plans: list[_Plan] = []
    for kind, split in (("train", "train"), ("val", "val")):
        plan = _plan_finetune(writer, kind, by_split[split], limits, warnings)  # type: ignore[arg-type]
        if plan:
            plans.append(plan)
    plans.extend(_plan_batch(writer, by_split["test"], limits, warnings))

    for plan in plans:
        for item in plan.items:
            writer.check(plan.kind, item)

    out_dir = prepared_dir / JSONL_DIR
    staging = out_dir / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        written: list[ExportedFile] = []
        done = 0
        for plan in plans:
            exported = _write_file(writer, plan, staging)
            written.append(exported)
            done += exported.lines
            if progress:
                progress(done)
        summary = _summary(options, limits, writer, written, warnings)
        (staging / EXPORT_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _replace_outputs(staging, out_dir, [f.path.name for f in written])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = [f.model_copy(update={"path": out_dir / f.path.name}) for f in written]
    return ExportResult(
        out_dir=out_dir, files=files, summary_path=out_dir / EXPORT_JSON, warnings=warnings
    )


def _inspect(prepared_dir: Path, row: ManifestRow, limits: ExportLimits) -> _Item:
    """Size and type of one image, from its first bytes: checked before anything is written."""
    path = prepared_dir / row.image_path
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as e:
        raise UserError(
            f"cannot read {path} ({e.strerror}): rerun `vlm-classify prepare`"
        ) from None
    if size > limits.max_image_bytes:
        raise UserError(
            f"{path} is {size:,} bytes, over the {limits.max_image_bytes:,}-byte image limit: "
            "shrink it or rerun `vlm-classify prepare`"
        )
    mime = sniff_image_mime(head)
    if mime is None:
        raise UserError(
            f"{path} is not a JPEG, PNG or WEBP image: replace it or rerun `vlm-classify prepare`"
        )
    if row.split != "test":
        try:
            with Image.open(path) as img:  # reads the header only
                mode = img.mode
        except OSError as e:
            raise UserError(
                f"{path} cannot be read as an image ({e}): rerun `vlm-classify prepare`"
            ) from None
        if mode not in ("RGB", "RGBA"):
            raise UserError(
                f"{path} is a {mode} image; fine-tuning takes RGB or RGBA: rerun `vlm-classify prepare`"
            )
    return _Item(row=row, path=path, mime=mime, size=size)


def _check_rows(rows: list[ManifestRow], labels: list[str]) -> None:
    seen: set[str] = set()
    known = set(labels)
    for row in rows:
        if row.id in seen:
            raise DataError(f"manifest id {row.id!r} appears twice: rerun `vlm-classify prepare`")
        seen.add(row.id)
        if row.label not in known:
            raise DataError(
                f"manifest label {row.label!r} is not in labels.txt: rerun `vlm-classify prepare`"
            )


def _plan_finetune(
    writer: _Writer, kind: FileKind, items: list[_Item], limits: ExportLimits, warnings: list[str]
) -> _Plan | None:
    name = f"{kind}.jsonl"
    if kind == "train" and not items:
        warnings.append(
            f"no train images: {name} not written (zero-shot only; fine-tuning needs at least "
            f"{limits.min_train_examples})"
        )
        return None
    if kind == "train" and len(items) < limits.min_train_examples:
        raise UserError(
            f"{len(items)} training images: fine-tuning needs at least {limits.min_train_examples}; "
            "prepare more images per class"
        )
    if not items:
        warnings.append(
            f"no {kind} images: {name} not written (fine-tuning runs without a validation file)"
        )
        return None
    if len(items) > limits.max_ft_examples:
        raise UserError(
            f"{len(items):,} {kind} examples: a fine-tuning file takes at most {limits.max_ft_examples:,} "
            "with images; prepare fewer images per class"
        )
    size = sum(writer.line_bytes(kind, it) for it in items)
    if size > limits.max_upload_bytes:
        raise UserError(
            f"{name} would be {size:,} bytes, over the {limits.max_upload_bytes:,}-byte upload limit: "
            "prepare fewer or smaller images"
        )
    if size > limits.max_ft_file_bytes:
        warnings.append(
            f"{name} is {size:,} bytes, over the Files API's {limits.max_ft_file_bytes:,}: "
            "upload it with the Uploads API"
        )
    return _Plan(kind=kind, name=name, items=items, bytes=size)


def _plan_batch(
    writer: _Writer, items: list[_Item], limits: ExportLimits, warnings: list[str]
) -> list[_Plan]:
    """Split the test set into as few Batch files as the per-file line and byte limits allow."""
    if not items:
        warnings.append("no test images: no Batch input written")
        return []
    chunks: list[tuple[list[_Item], int]] = [([], 0)]
    for item in items:
        size = writer.line_bytes("test-batch", item)
        if size > limits.max_batch_bytes:
            raise UserError(
                f"{item.path}: its Batch line is {size:,} bytes, over the "
                f"{limits.max_batch_bytes:,}-byte file limit; shrink the image"
            )
        current, total = chunks[-1]
        if len(current) >= limits.max_batch_lines or total + size > limits.max_batch_bytes:
            chunks.append(([], 0))
            current, total = chunks[-1]
        current.append(item)
        chunks[-1] = (current, total + size)
    if len(chunks) == 1:
        return [
            _Plan(
                kind="test-batch", name="test-batch.jsonl", items=chunks[0][0], bytes=chunks[0][1]
            )
        ]
    warnings.append(
        f"the test set needs {len(chunks)} Batch input files: submit one batch per file"
    )
    return [
        _Plan(kind="test-batch", name=f"test-batch-{i:03d}.jsonl", items=chunk, bytes=size)
        for i, (chunk, size) in enumerate(chunks, start=1)
    ]


def _image_base64(item: _Item) -> bytes:
    """The image's base64 text, read once and checked against the manifest."""
    data = item.path.read_bytes()
    if len(data) != item.size or hashlib.sha256(data).hexdigest() != item.row.image_sha256:
        raise DataError(f"{item.path} changed since `vlm-classify prepare`: rerun it")
    return base64.b64encode(data)


def _write_file(writer: _Writer, plan: _Plan, staging: Path) -> ExportedFile:
    path = staging / plan.name
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as f:
        for item in plan.items:
            before, after = writer.halves(plan.kind, item)
            for chunk in (before, _image_base64(item), after):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    if size != plan.bytes:
        raise DataError(f"{plan.name}: wrote {size:,} bytes, planned {plan.bytes:,}; rerun export")
    return ExportedFile(
        kind=plan.kind, path=path, lines=len(plan.items), bytes=size, sha256=digest.hexdigest()
    )


def _replace_outputs(staging: Path, out_dir: Path, names: list[str]) -> None:
    """Move the new files into place and drop outputs of an earlier export that no longer apply."""
    for old in (
        *out_dir.glob("train.jsonl"),
        *out_dir.glob("val.jsonl"),
        *out_dir.glob("test-batch*.jsonl"),
    ):
        if old.name not in names:
            old.unlink()
    fsync_tree(staging)  # on disk before the renames make them the outputs
    for name in [*names, EXPORT_JSON]:
        (staging / name).replace(out_dir / name)


def _summary(
    options: ExportOptions,
    limits: ExportLimits,
    writer: _Writer,
    files: list[ExportedFile],
    warnings: list[str],
) -> dict[str, Any]:
    return {
        "vlm_classify_version": __version__,
        "options": options.model_dump(mode="json"),
        "provider": writer.provider,
        "model": writer.model,
        "batch_url": writer.url,
        "labels": len(writer.labels),
        "system_prompt": writer.system,
        "training_system_prompt": writer.training_system,
        "limits": limits.model_dump(mode="json"),
        "files": [
            {
                "kind": f.kind,
                "name": f.path.name,
                "lines": f.lines,
                "bytes": f.bytes,
                "sha256": f.sha256,
            }
            for f in files
        ],
        "warnings": warnings,
    }
