"""`prepare`: turn a source tree into a validated, deduplicated, split sample with a manifest.

Flow: discover the tree, hash every candidate file (cheap, finds exact copies anywhere), then per
class decode candidates in sampling order until enough usable images are found (in worker
processes, which write the prepared JPEGs and return only small records), check that no image
sits in two splits, and write `manifest.csv`, `labels.txt` and `prepare-report.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import (
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
)
from pathlib import Path
from time import perf_counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UserError
from .download import download_stanford_dogs
from .images import ImageTask, process_batch, sha256_file
from .manifest import LABELS_NAME, MANIFEST_NAME, SPLITS, ManifestRow, read_manifest, write_manifest
from .selection import Candidate, Selection
from .sources import SourceTree, discover
from .splits import Sampling, assign_splits, sampling_order

REPORT_NAME = "prepare-report.json"
IMAGES_DIR = "images"
STANFORD_DOGS = "stanford-dogs"

POOL_MIN_IMAGES = 256
"""Below this many images in a wave, decode in-process: starting worker processes costs more."""

ProgressFn = Callable[[str, int, int], None]
"""Called with (phase, done, total); phases: `download` (bytes), `extract`, `hash`, `images`."""


class PrepareOptions(BaseModel):
    """Settings of one `prepare` run; saved in the report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_class: int | None = Field(default=None, ge=1)
    """Images per class; defaults to the sum of `split` and must equal it when given."""
    split: tuple[int, int, int] = (40, 5, 5)
    """Images per class for train, val and test, in that order."""
    sampling: Sampling = "first"
    """`first`: the first usable files by sorted path (the original study); `random`: seeded shuffle."""
    seed: int = Field(default=42, ge=0)
    """Seed of `random` sampling (each class shuffles with `"{seed}:{class_key}"`)."""
    max_side: int = Field(default=512, ge=1)
    """Longest side of prepared images in pixels; larger images are downscaled."""
    strict: bool = False
    """Fail instead of warning when a class has fewer usable images than `per_class`."""
    workers: int | None = Field(default=None, ge=1)
    """Worker processes for decoding; defaults to the number of CPUs. 1 runs everything in-process."""
    cache_dir: Path | None = None
    """Where `stanford-dogs` is downloaded; defaults to the user cache dir of vlm-classify."""

    @field_validator("split")
    @classmethod
    def _split_ok(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(n < 0 for n in v) or sum(v) == 0:
            raise ValueError("split needs three counts >= 0 with a positive sum, e.g. 40,5,5")
        return v

    @model_validator(mode="after")
    def _per_class_matches(self) -> PrepareOptions:
        if self.per_class is not None and self.per_class != sum(self.split):
            raise ValueError(
                f"per-class {self.per_class} disagrees with split {','.join(map(str, self.split))} "
                f"(sum {sum(self.split)}): give a split that sums to {self.per_class}, or leave out per-class"
            )
        return self

    @property
    def count(self) -> int:
        """Images wanted per class."""
        return sum(self.split)


class SkippedFile(BaseModel):
    """A file left out of the sample, and why."""

    path: str
    reason: str


class PrepareResult(BaseModel):
    """What `prepare` did: where the outputs are and the counts the CLI summarises."""

    out_dir: Path
    manifest_path: Path
    labels_path: Path
    report_path: Path
    source_root: Path
    layout: str
    classes: int
    counts: dict[str, int]
    """Images per split."""
    per_class: dict[str, dict[str, int]]
    """Per label: images per split."""
    skipped: list[SkippedFile]
    duplicates: list[dict[str, Any]]
    leakage: list[dict[str, Any]]
    warnings: list[str]
    notes: list[str]
    decoded: int
    written: int
    copied: int
    """Prepared images that are byte-for-byte copies of their source."""
    timings: dict[str, float]
    images_per_s: float


def _resolve_source(
    source: str | Path, options: PrepareOptions, progress: ProgressFn | None
) -> Path:
    """A path as given, or the extracted Stanford Dogs archive for the word `stanford-dogs`."""
    if str(source) == STANFORD_DOGS and not Path(source).exists():
        return download_stanford_dogs(
            options.cache_dir,
            progress=(lambda d, t: progress("download", d, t or 0)) if progress else None,
            extract_progress=(lambda d, t: progress("extract", d, t)) if progress else None,
        )
    return Path(source).expanduser()


def _check_out(out: Path, root: Path) -> None:
    """Refuse an output folder that overlaps the source (a rerun would read its own output)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder (it will be created)")
    o, r = out.resolve(), root.resolve()
    if o == r or r in o.parents:
        raise UserError(f"--out {out} is inside the source {root}: choose a folder outside it")
    if (o / IMAGES_DIR) == r or (o / IMAGES_DIR) in r.parents:
        raise UserError(f"the source {root} is inside {out / IMAGES_DIR}: choose another --out")


def _hash_file(path: Path) -> tuple[str, str]:
    """(sha256, error) of a file; empty and unreadable files get an error instead of a hash."""
    try:
        if path.stat().st_size == 0:
            return "", "empty file"
        return sha256_file(path), ""
    except OSError as e:
        return "", f"unreadable: {e.strerror or e}"


def _hash_all(cands: list[Candidate], workers: int, progress: ProgressFn | None) -> None:
    """Hash every candidate's bytes with threads (hashlib releases the GIL on large buffers)."""
    with ThreadPoolExecutor(max_workers=max(2, 2 * workers)) as pool:
        for i, (c, (sha, err)) in enumerate(
            zip(cands, pool.map(_hash_file, [c.src for c in cands]), strict=True), 1
        ):
            c.sha256, c.error = sha, err
            if progress and (i % 64 == 0 or i == len(cands)):
                progress("hash", i, len(cands))


def _decode(
    wave: list[Candidate],
    pool: Executor | None,
    workers: int,
    out: Path,
    max_side: int,
    on_done: Callable[[int], None],
) -> None:
    """Decode and write a wave of candidates, in chunks across worker processes (or inline)."""
    tasks = [ImageTask(str(c.src), str(out / c.image_path), max_side) for c in wave]
    if pool is None:
        for c, t in zip(wave, tasks, strict=True):
            c.result = process_batch([t])[0]
            on_done(1)
        return
    size = max(1, min(32, math.ceil(len(tasks) / (workers * 8))))
    futures: dict[Future[Any], int] = {
        pool.submit(process_batch, tasks[i : i + size]): i for i in range(0, len(tasks), size)
    }
    try:
        for fut in as_completed(futures):
            start = futures[fut]
            try:
                results = fut.result()
            except OSError as e:
                raise UserError(
                    f"cannot write prepared images under {out}: {e}; check space and permissions"
                ) from None
            for j, r in enumerate(results):
                wave[start + j].result = r
            on_done(len(results))
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _candidates(tree: SourceTree, options: PrepareOptions) -> list[list[Candidate]]:
    """Each class's candidates in sampling order."""
    orders = []
    for ci, cls in enumerate(tree.classes):
        cands = [
            Candidate(
                ci,
                f.rel,
                tree.root / f.rel,
                f"{cls.key}/{f.stem}",
                f"{IMAGES_DIR}/{cls.key}/{f.stem}.jpg",
            )
            for f in cls.files
        ]
        orders.append(sampling_order(cands, options.sampling, options.seed, cls.key))
    return orders


def _leakage(rows: list[tuple[str, Candidate]]) -> list[dict[str, Any]]:
    """Any file, pixel or output hash found in more than one split (empty by construction)."""
    splits_of: dict[str, set[str]] = {}
    paths_of: dict[str, list[str]] = {}
    for split, c in rows:
        for k in (f"bytes:{c.sha256}", *c.identity_keys()):
            splits_of.setdefault(k, set()).add(split)
            paths_of.setdefault(k, []).append(c.rel)
    return [
        {"key": k, "splits": sorted(s), "paths": sorted(paths_of[k])}
        for k, s in sorted(splits_of.items())
        if len(s) > 1
    ]


def _previous_images(out: Path) -> set[str]:
    """Image paths listed by an earlier run's manifest: the only files a rerun may remove."""
    try:
        return {r.image_path for r in read_manifest(out)}
    except Exception:
        return set()


def _remove(out: Path, rels: set[str]) -> int:
    """Delete prepared images no longer in the sample; returns how many were removed."""
    removed = 0
    for rel in sorted(rels):
        path = out / rel
        if path.is_file():
            path.unlink()
            removed += 1
            with contextlib.suppress(OSError):  # removes the class folder only once it is empty
                path.parent.rmdir()
    return removed


def prepare(
    source: str | Path,
    out: str | Path,
    options: PrepareOptions | None = None,
    *,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """Sample, validate, normalise and split a source tree into `out`; see the module docstring.

    A class with fewer usable images than wanted keeps all it has, filling test, then val, then
    train (see `splits.split_counts`), with a warning, or a UserError under `strict`.
    """
    options = options or PrepareOptions()
    timings: dict[str, float] = {}
    t0 = perf_counter()
    tree = discover(_resolve_source(source, options, progress))
    out = Path(out).expanduser()
    _check_out(out, tree.root)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_images(out)
    workers = options.workers or os.cpu_count() or 1
    orders = _candidates(tree, options)
    timings["discover_s"] = perf_counter() - t0

    t = perf_counter()
    _hash_all([c for cands in orders for c in cands], workers, progress)
    timings["hash_s"] = perf_counter() - t

    t = perf_counter()
    labels = [cls.label for cls in tree.classes]
    selection = Selection(orders, labels, options.count)
    done, total = 0, 0

    def on_done(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("images", done, total)

    pool: Executor | None = None
    decoded: list[Candidate] = []
    try:
        while wave := selection.next_wave():
            total += len(wave)
            if pool is None and workers > 1 and len(wave) >= POOL_MIN_IMAGES:
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            _decode(wave, pool, workers, out, options.max_side, on_done)
            selection.record(wave)
            decoded.extend(wave)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    chosen, skips = selection.finish()
    timings["images_s"] = perf_counter() - t

    rows, placed, per_class, warnings, short = _build_rows(tree, chosen, options)
    all_skips = sorted(
        [SkippedFile(path=rel, reason=why) for rel, why in tree.skipped]
        + [SkippedFile(path=c.rel, reason=why) for c, why in skips],
        key=lambda s: s.path,
    )
    failed = bool(short and options.strict)
    kept = {row.image_path for row in rows}
    if not failed:
        write_manifest(out / MANIFEST_NAME, rows)
        labels_txt = sorted(k for k, v in per_class.items() if sum(v.values()))
        (out / LABELS_NAME).write_text("".join(f"{x}\n" for x in labels_txt), encoding="utf-8")
    # Only files this tool wrote are ever removed; a failed run keeps the previous sample whole.
    written_now = {c.image_path for c in decoded}
    removed = _remove(out, written_now - previous if failed else (written_now | previous) - kept)
    timings["total_s"] = perf_counter() - t0
    result = PrepareResult(
        out_dir=out,
        manifest_path=out / MANIFEST_NAME,
        labels_path=out / LABELS_NAME,
        report_path=out / REPORT_NAME,
        source_root=tree.root,
        layout=tree.layout,
        classes=sum(1 for v in per_class.values() if sum(v.values())),
        counts={s: sum(1 for row in rows if row.split == s) for s in SPLITS},
        per_class=per_class,
        skipped=all_skips,
        duplicates=selection.duplicates,
        leakage=_leakage(placed),
        warnings=warnings,
        notes=[
            *tree.notes,
            *([f"removed {removed} prepared image(s) no longer in the sample"] if removed else []),
        ],
        decoded=sum(1 for c in decoded if c.result and c.result.ok),
        written=sum(1 for c in decoded if c.result and c.result.written),
        copied=sum(1 for _, c in placed if c.result and c.result.kept),
        timings={k: round(v, 3) for k, v in timings.items()},
        images_per_s=round(len(decoded) / timings["total_s"], 1) if timings["total_s"] else 0.0,
    )
    _write_report(result, options, str(source))
    if failed:
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise UserError(
            f"{len(short)} class(es) have fewer than {options.count} usable images "
            f"({'; '.join(short[:5])}{more}): lower --split or drop --strict "
            f"(details in {result.report_path})"
        )
    return result


def _build_rows(
    tree: SourceTree, chosen: list[list[Candidate]], options: PrepareOptions
) -> tuple[
    list[ManifestRow], list[tuple[str, Candidate]], dict[str, dict[str, int]], list[str], list[str]
]:
    """Manifest rows (sorted by split, then id), (split, candidate) pairs, per-class counts,
    warnings, and `label: count` for each short class."""
    rows: list[ManifestRow] = []
    placed: list[tuple[str, Candidate]] = []
    per_class: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    short: list[str] = []
    for ci, cls in enumerate(tree.classes):
        assigned = assign_splits(chosen[ci], options.split)
        counts: dict[str, int] = {s: sum(1 for a, _ in assigned if a == s) for s in SPLITS}
        per_class[cls.label] = counts
        if len(assigned) < options.count:
            short.append(f"{cls.label}: {len(assigned)}")
            warnings.append(
                f"class {cls.label} ({cls.folder}) has {len(assigned)} usable image(s), fewer than "
                f"{options.count}: split {'/'.join(str(counts[s]) for s in SPLITS)}"
                + (" and left out of labels.txt" if not assigned else "")
            )
        for split, c in assigned:
            r = c.result
            if r is None:  # cannot happen: only decoded candidates are chosen
                raise RuntimeError(f"{c.rel} was chosen without being decoded")
            placed.append((split, c))
            rows.append(
                ManifestRow(
                    id=c.id,
                    split=split,
                    label=cls.label,
                    synset=cls.synset,
                    source_path=c.rel,
                    source_sha256=c.sha256,
                    image_path=c.image_path,
                    image_sha256=r.image_sha256,
                    width=r.width,
                    height=r.height,
                    bytes=r.bytes,
                )
            )
    rows.sort(key=lambda row: (SPLITS.index(row.split), row.id))
    return rows, placed, per_class, warnings, short


def _write_report(result: PrepareResult, options: PrepareOptions, source: str) -> None:
    """Write prepare-report.json: settings, counts, skips, duplicates, leakage, warnings, timings."""
    report = {
        "settings": {"source": source, **options.model_dump(mode="json")},
        "source_root": str(result.source_root),
        "layout": result.layout,
        "counts": result.counts,
        "classes": result.classes,
        "per_class": result.per_class,
        "decoded": result.decoded,
        "written": result.written,
        "copied": result.copied,
        "skipped": [s.model_dump() for s in result.skipped],
        "duplicates": result.duplicates,
        "leakage": result.leakage,
        "warnings": result.warnings,
        "notes": result.notes,
        "timings": result.timings,
        "images_per_s": result.images_per_s,
    }
    tmp = result.report_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(result.report_path)
