"""`prepare`: turn a source tree into a validated, deduplicated, split sample with a manifest.

Flow: discover the tree, hash every candidate file (cheap, finds exact copies anywhere), then per
class decode candidates in sampling order until enough usable images are found (in worker
processes, which write the prepared JPEGs and return only small records), check that no image
sits in two splits, and commit `manifest.csv`, `labels.txt` and `prepare-report.json`. Prepared
images have content-hashed names, so a run that fails or is interrupted leaves the previous
sample exactly as it was (see `outdir`).
"""

from __future__ import annotations

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
    wait,
)
from pathlib import Path
from time import perf_counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UserError
from .download import download_stanford_dogs
from .images import ImageTask, process_batch, sha256_file
from .manifest import LABELS_NAME, MANIFEST_NAME, SPLITS, ManifestRow
from .outdir import (
    FAILED_REPORT_NAME,
    IMAGES_DIR,
    REPORT_NAME,
    check_out,
    claim,
    commit,
    listed_images,
    remove_files,
    unlisted_files,
    write_report,
)
from .selection import Candidate, Selection
from .sources import SourceTree, discover, shown
from .splits import Sampling, assign_splits, sampling_order, suggest_split

STANFORD_DOGS = "stanford-dogs"
DEFAULT_SPLIT = (40, 5, 5)

POOL_MIN_IMAGES = 256
"""Below this many images in a wave, decode in-process: starting worker processes costs more."""

ProgressFn = Callable[[str, int, int], None]
"""Called with (phase, done, total); phases: `download` (bytes), `extract`, `hash`, `images`."""


def default_workers() -> int:
    """The CPUs this process may run on (a container's quota, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class PrepareOptions(BaseModel):
    """Settings of one `prepare` run; saved in the report. The one place they are validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_class: int | None = Field(default=None, ge=1)
    """Images per class; defaults to the sum of `split`. Alone, it gives an 80/10/10 split."""
    split: tuple[int, int, int] = DEFAULT_SPLIT
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
    """Worker processes for decoding; defaults to the CPUs available. 1 runs everything in-process."""
    cache_dir: Path | None = None
    """Where `stanford-dogs` is downloaded; defaults to the user cache dir of vlm-classify."""

    @model_validator(mode="before")
    @classmethod
    def _derive_split(cls, data: Any) -> Any:
        """No split (or None) with a per-class count: the original study's 80/10/10 of it."""
        if not isinstance(data, dict) or data.get("split") is not None:
            return data
        data = {k: v for k, v in data.items() if k != "split"}
        n = data.get("per_class")
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
            data["split"] = suggest_split(n)
        return data

    @field_validator("split")
    @classmethod
    def _split_ok(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(n < 0 for n in v) or sum(v) == 0:
            raise ValueError("split needs three counts >= 0 with a positive sum, e.g. 40,5,5")
        return v

    @model_validator(mode="after")
    def _per_class_matches(self) -> PrepareOptions:
        if self.per_class is not None and self.per_class != sum(self.split):
            hint = ",".join(map(str, suggest_split(self.per_class)))
            raise ValueError(
                f"per-class {self.per_class} disagrees with split {','.join(map(str, self.split))} "
                f"(sum {sum(self.split)}): give a split that sums to {self.per_class}, such as "
                f"{hint}, or leave out the split (it is then {hint})"
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
    """Absolute path of the folder whose sub-folders are the classes."""
    layout: str
    classes: int
    counts: dict[str, int]
    """Images per split."""
    per_class: dict[str, dict[str, int]]
    """Per label: images per split."""
    wanted: int
    """Images wanted per class."""
    short_classes: dict[str, int]
    """Classes with fewer usable images than wanted, and how many they have."""
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


def _hash_file(path: Path) -> tuple[str, str]:
    """(sha256, error) of a file; empty and unreadable files get an error instead of a hash."""
    try:
        if path.stat().st_size == 0:
            return "", "empty file"
        return sha256_file(path), ""
    except OSError as e:
        return "", f"unreadable: {e.strerror or e}"


def _hash_all(cands: list[Candidate], workers: int, progress: ProgressFn | None) -> None:
    """Hash every candidate's bytes with threads (hashlib releases the GIL on large buffers).

    An interrupt cancels the hashes not yet started instead of waiting for all of them.
    """
    pool = ThreadPoolExecutor(max_workers=max(2, 2 * workers))
    try:
        for i, (c, (sha, err)) in enumerate(
            zip(cands, pool.map(_hash_file, [c.src for c in cands]), strict=True), 1
        ):
            c.sha256, c.error = sha, err
            if progress and (i % 64 == 0 or i == len(cands)):
                progress("hash", i, len(cands))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _decode(
    wave: list[Candidate],
    pool: Executor | None,
    workers: int,
    out: Path,
    max_side: int,
    on_done: Callable[[int], None],
) -> None:
    """Decode and write a wave of candidates, in chunks across worker processes (or inline).

    An OSError can only come from writing the output (reading a source is a skip reason), so it
    becomes one UserError here, whichever way the wave ran.
    """
    tasks = [ImageTask(str(c.src), str(out / c.image_base), max_side) for c in wave]
    try:
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
                results = fut.result()
                for j, r in enumerate(results):
                    wave[start + j].result = r
                on_done(len(results))
        except BaseException:
            for fut in futures:
                fut.cancel()
            # Chunks already running still write their images: wait for them (shutdown would
            # anyway) and keep their records, so the caller can take those files back.
            wait(futures)
            for fut, start in futures.items():
                if not fut.cancelled() and fut.exception() is None:
                    for j, r in enumerate(fut.result()):
                        wave[start + j].result = r
            raise
    except OSError as e:
        raise UserError(
            f"cannot write prepared images under {shown(out / IMAGES_DIR)} ({e.strerror or e}): "
            "check space and permissions"
        ) from None


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
                f"{IMAGES_DIR}/{cls.key}/{f.stem}",
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


def _decode_all(
    selection: Selection,
    tried: list[Candidate],
    workers: int,
    out: Path,
    options: PrepareOptions,
    progress: ProgressFn | None,
) -> None:
    """Decode waves until every class has enough usable images or runs out of candidates."""
    done, total = 0, 0

    def on_done(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("images", done, total)

    pool: Executor | None = None
    try:
        while wave := selection.next_wave():
            total += len(wave)
            tried.extend(wave)
            if pool is None and workers > 1 and len(wave) >= POOL_MIN_IMAGES:
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            _decode(wave, pool, workers, out, options.max_side, on_done)
            selection.record(wave)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _problem(result: PrepareResult, options: PrepareOptions) -> str:
    """Why this sample must not replace the previous one ("" when it may)."""
    usable = [label for label, c in result.per_class.items() if sum(c.values())]
    if not usable:
        return (
            f"no usable images under {shown(result.source_root)}: all "
            f"{len(result.skipped)} candidate file(s) were skipped; check the reasons"
        )
    if len(usable) < 2:
        return (
            f"only one class ({usable[0]}) has usable images: a classifier needs at least two "
            "classes; fix or add images in the others"
        )
    short = [f"{label}: {n}" for label, n in result.short_classes.items()]
    if short and options.strict:
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        return (
            f"{len(short)} class(es) have fewer than {options.count} usable images "
            f"({'; '.join(short[:5])}{more}): lower --split or drop --strict"
        )
    return ""


def prepare(
    source: str | Path,
    out: str | Path,
    options: PrepareOptions | None = None,
    *,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """Sample, validate, normalise and split a source tree into `out`; see the module docstring.

    A class with fewer usable images than wanted keeps all it has, filling test, then val, then
    train (see `splits.split_counts`), with a warning, or a UserError under `strict`. No usable
    images, or only one class with any, is a UserError. Whenever a UserError or an interrupt
    ends a run, the previous manifest, labels, report and every image they list are unchanged.
    """
    options = options or PrepareOptions()
    timings: dict[str, float] = {}
    t0 = perf_counter()
    tree = discover(_resolve_source(source, options, progress))
    out = Path(out).expanduser()
    check_out(out, tree.root, tree.layout)
    claim(out)
    previous = listed_images(out)
    workers = options.workers or default_workers()
    orders = _candidates(tree, options)
    timings["discover_s"] = perf_counter() - t0

    tried: list[Candidate] = []
    stale: list[Path] = []
    committed = False
    try:
        t = perf_counter()
        _hash_all([c for cands in orders for c in cands], workers, progress)
        timings["hash_s"] = perf_counter() - t

        t = perf_counter()
        selection = Selection(orders, [cls.label for cls in tree.classes], options.count)
        _decode_all(selection, tried, workers, out, options, progress)
        chosen, skips = selection.finish()
        timings["images_s"] = perf_counter() - t

        rows, placed, per_class, warnings, short = _build_rows(tree, chosen, options)
        decoded = [c for c in tried if c.result is not None]
        result = PrepareResult(
            out_dir=out,
            manifest_path=out / MANIFEST_NAME,
            labels_path=out / LABELS_NAME,
            report_path=out / REPORT_NAME,
            source_root=tree.root.absolute(),
            layout=tree.layout,
            classes=sum(1 for v in per_class.values() if sum(v.values())),
            counts={s: sum(1 for row in rows if row.split == s) for s in SPLITS},
            per_class=per_class,
            wanted=options.count,
            short_classes=short,
            skipped=sorted(
                [SkippedFile(path=rel, reason=why) for rel, why in tree.skipped]
                + [SkippedFile(path=c.rel, reason=why) for c, why in skips],
                key=lambda s: s.path,
            ),
            duplicates=selection.duplicates,
            leakage=_leakage(placed),
            warnings=warnings,
            notes=list(tree.notes),
            decoded=sum(1 for c in decoded if c.result and c.result.ok),
            written=sum(1 for c in decoded if c.result and c.result.written),
            copied=sum(1 for _, c in placed if c.result and c.result.kept),
            timings={},
            images_per_s=0.0,
        )
        problem = _problem(result, options)
        kept = {row.image_path for row in rows}
        if not problem:
            stale = unlisted_files(out, kept)
        if stale:
            result.notes.append(
                f"removed {len(stale)} file(s) under {IMAGES_DIR}/ that the manifest does not list"
            )
        total_s = perf_counter() - t0
        result.timings = {k: round(v, 3) for k, v in {**timings, "total_s": total_s}.items()}
        result.images_per_s = round(len(decoded) / total_s, 1) if total_s else 0.0
        report = _report(result, options, source)
        if problem:
            failed = out / FAILED_REPORT_NAME
            try:
                write_report(failed, report)
                problem += f" (details in {shown(failed)})"
            except OSError:  # the problem is worth reporting without its details
                pass
            raise UserError(problem)
        labels = sorted(k for k, v in per_class.items() if sum(v.values()))
        commit(out, rows, labels, report)
        committed = True
    finally:
        if not committed:  # take back what this run added; what the manifest lists stays
            remove_files(
                out, {c.image_path for c in tried if c.result and c.result.written} - previous
            )
    remove_files(out, stale)
    return result


def _build_rows(
    tree: SourceTree, chosen: list[list[Candidate]], options: PrepareOptions
) -> tuple[
    list[ManifestRow],
    list[tuple[str, Candidate]],
    dict[str, dict[str, int]],
    list[str],
    dict[str, int],
]:
    """Manifest rows (sorted by split, then id), (split, candidate) pairs, per-class counts,
    warnings, and the usable count of each short class."""
    rows: list[ManifestRow] = []
    placed: list[tuple[str, Candidate]] = []
    per_class: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    short: dict[str, int] = {}
    for ci, cls in enumerate(tree.classes):
        assigned = assign_splits(chosen[ci], options.split)
        counts: dict[str, int] = {s: sum(1 for a, _ in assigned if a == s) for s in SPLITS}
        per_class[cls.label] = counts
        if len(assigned) < options.count:
            short[cls.label] = len(assigned)
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


def _report(result: PrepareResult, options: PrepareOptions, source: str | Path) -> dict[str, Any]:
    """prepare-report.json: settings, counts, skips, duplicates, leakage, warnings, timings."""
    return {
        "settings": {"source": shown(str(source)), **options.model_dump(mode="json")},
        "source_root": shown(result.source_root),
        "layout": result.layout,
        "counts": result.counts,
        "classes": result.classes,
        "per_class": result.per_class,
        "short_classes": result.short_classes,
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
