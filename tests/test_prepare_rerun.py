"""`prepare` into a folder that already holds a sample: failed and interrupted reruns keep it whole,
successful ones leave exactly what the new manifest lists, and nothing outside `images/` is touched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dataset_fixtures import image_files, jpeg, listed, make_tree, snapshot
from vlm_classify.dataset import prepare as prepare_mod
from vlm_classify.dataset.manifest import read_manifest, write_manifest
from vlm_classify.dataset.prepare import PrepareOptions, PrepareResult, default_workers, prepare
from vlm_classify.errors import UserError


def run(src: Path, out: Path, progress: Any = None, **opts: Any) -> PrepareResult:
    opts.setdefault("workers", 1)
    opts.setdefault("split", (2, 1, 1))
    return prepare(src, out, PrepareOptions(**opts), progress=progress)


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path]:
    """A source of two classes (200x150 images, so --max-side 64 changes every file) and a sample."""
    src = make_tree(tmp_path / "src", {"beagle": 6, "borzoi": 3}, size=(200, 150))
    out = tmp_path / "out"
    run(src, out, split=(2, 1, 1))
    return src, out


def test_failed_strict_rerun_with_other_bytes_keeps_every_listed_image(
    prepared: tuple[Path, Path],
) -> None:
    src, out = prepared
    before = snapshot(out)
    with pytest.raises(UserError, match="drop --strict"):  # borzoi has 3 of 4
        run(src, out, split=(2, 1, 1), max_side=64, strict=True)
    assert snapshot(out) == before  # the same paths would have held smaller JPEGs
    assert image_files(out) == listed(out)
    assert (
        json.loads((out / "prepare-report.failed.json").read_text())["settings"]["max_side"] == 64
    )
    run(src, out, split=(2, 1, 1), max_side=64)  # a successful run replaces both
    assert not (out / "prepare-report.failed.json").exists()
    assert image_files(out) == listed(out)
    assert all(r.width == 64 for r in read_manifest(out))


@pytest.mark.parametrize("phase", ["hash", "images", "images-pool"])
def test_interrupted_rerun_keeps_the_sample_and_the_next_run_cleans_up(
    prepared: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    src, out = prepared
    make_tree(src, {"beagle": 70}, size=(200, 150), seed0=500)  # enough files to interrupt
    before = snapshot(out)
    workers = 1
    if phase == "images-pool":
        monkeypatch.setattr(prepare_mod, "POOL_MIN_IMAGES", 4)
        workers, phase = 2, "images"

    def interrupt(p: str, done: int, total: int) -> None:
        if p == phase and done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(src, out, progress=interrupt, split=(30, 2, 2), max_side=64, workers=workers)
    assert snapshot(out) == before
    assert image_files(out) == listed(out)  # it took back the images it wrote
    (out / "images/beagle/orphan-0123456789ab.jpg").write_bytes(b"as if killed with -9")
    result = run(src, out, split=(30, 2, 2), max_side=64, workers=workers)
    assert image_files(out) == listed(out)  # the next run removes what a killed one left
    assert result.counts["train"] == 30  # borzoi's 3 go to val and test


def test_successful_run_removes_orphans_and_stale_temporary_files(
    prepared: tuple[Path, Path],
) -> None:
    src, out = prepared
    (out / "images/beagle/orphan-0123456789ab.jpg").write_bytes(b"left by a killed run")
    (out / "images/beagle/.x.jpg.123.tmp").write_bytes(b"half")
    (out / "images/gone").mkdir()
    (out / "images/gone/old.jpg").write_bytes(b"x")
    result = run(src, out, split=(2, 1, 1))
    assert image_files(out) == listed(out)
    assert not (out / "images/gone").exists()
    assert any("removed 3 file(s)" in n for n in result.notes)


def test_paths_outside_images_are_never_deleted(prepared: tuple[Path, Path]) -> None:
    src, out = prepared
    victim = out.parent / "victim.txt"
    victim.write_text("keep me")
    (out / "keep.txt").write_text("keep me too")
    rows = read_manifest(out)
    rows[0] = rows[0].model_copy(update={"image_path": "../victim.txt"})
    rows[1] = rows[1].model_copy(update={"image_path": "images/../keep.txt"})
    write_manifest(out / "manifest.csv", rows)
    run(src, out, split=(1, 1, 1))
    with pytest.raises(UserError):
        run(src, out, split=(2, 1, 1), strict=True)
    assert victim.read_text() == "keep me" and (out / "keep.txt").read_text() == "keep me too"


def test_foreign_images_folder_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": 4, "b": 4})
    jpeg(tmp_path / "mine/images/holiday.jpg")
    with pytest.raises(UserError, match="did not write"):
        run(src, tmp_path / "mine")
    assert (tmp_path / "mine/images/holiday.jpg").is_file()
    run(src, tmp_path / "fresh")  # a new folder is claimed: later runs may clean it
    assert (tmp_path / "fresh/images/.vlm-classify-prepare").is_file()


@pytest.mark.parametrize("workers", [1, 2])
def test_write_errors_are_user_errors_in_process_and_in_workers(
    prepared: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    src, out = prepared
    monkeypatch.setattr(prepare_mod, "POOL_MIN_IMAGES", 2)
    manifest = (out / "manifest.csv").read_bytes()
    blocker = out / "images/borzoi"
    for f in blocker.iterdir():  # a file where a class folder must go
        f.rename(out / "images" / f"borzoi-{f.name}")
    blocker.rmdir()
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write prepared images"):
        run(src, out, split=(1, 1, 1), max_side=64, workers=workers)
    assert (out / "manifest.csv").read_bytes() == manifest


def test_hashing_stops_promptly_on_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for folder in ("a", "b"):
        (src / folder).mkdir(parents=True)
        for i in range(400):
            (src / folder / f"{i:03d}.jpg").write_bytes(b"x" * (i + 1))
    hashed: list[Path] = []
    real = prepare_mod._hash_file

    def slow_hash(path: Path) -> tuple[str, str]:
        hashed.append(path)
        time.sleep(0.002)  # a large file on a slow disk
        return real(path)

    def interrupt(phase: str, done: int, total: int) -> None:
        if phase == "hash":
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod, "_hash_file", slow_hash)
    with pytest.raises(KeyboardInterrupt):
        run(src, tmp_path / "out", progress=interrupt)
    assert len(hashed) < 800  # pending hashes were cancelled, not waited for


def test_out_holding_the_stanford_images_folder_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "Dogs" / "Images", {"n02085620-Chihuahua": 4, "n02088364-beagle": 4})
    for given in (src.parent, src):  # manifest.csv and images/ would land next to Images/
        with pytest.raises(UserError, match="holding the source"):
            run(given, src.parent)
    assert sorted(p.name for p in src.parent.iterdir()) == ["Images"]


def test_out_equal_to_the_source_but_for_case_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "Src", {"a": 4, "b": 4})  # one folder on macOS and Windows
    with pytest.raises(UserError, match="inside the source"):
        run(src, tmp_path / "src")
    assert not (tmp_path / "src").exists()


def test_zero_or_one_usable_class_fails_and_keeps_the_previous_sample(
    prepared: tuple[Path, Path],
) -> None:
    src, out = prepared
    before = snapshot(out)
    bad = make_tree(src.parent / "bad", {"a": 0, "b": 0})
    for folder in ("a", "b"):
        (bad / folder / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="no usable images"):
        run(bad, out)
    jpeg(bad / "a" / "good.jpg")
    with pytest.raises(UserError, match="a classifier needs at least two"):
        run(bad, out)
    assert snapshot(out) == before
    assert image_files(out) == listed(out)


def test_default_workers_follow_the_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity here")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert default_workers() == 1
