"""`prepare` discovery on odd trees: names that are not UTF-8, symlink loops, unreadable folders,
labels that collide, trees that are split already or one level too high, non-raster files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dataset_fixtures import jpeg, make_tree
from vlm_classify.dataset.manifest import read_labels, read_manifest
from vlm_classify.dataset.prepare import PrepareOptions, PrepareResult, prepare
from vlm_classify.dataset.sources import BAD_NAME
from vlm_classify.errors import UserError


def run(src: Path, out: Path, **opts: Any) -> PrepareResult:
    opts.setdefault("workers", 1)
    opts.setdefault("split", (2, 1, 1))
    return prepare(src, out, PrepareOptions(**opts))


def _bytes_name(folder: Path, name: bytes) -> Path:
    """A file whose name is not UTF-8 (skips where the filesystem refuses such names)."""
    path = os.path.join(os.fsencode(folder), name)
    try:
        with open(path, "wb") as f:
            f.write((folder / "img_000.jpg").read_bytes()[:-7] + b"1234567")
    except OSError:
        pytest.skip("this filesystem only takes UTF-8 names")
    return Path(os.fsdecode(path))


def test_names_that_are_not_utf8_are_skipped_with_a_reason(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"cats": 4, "dogs": 4})
    _bytes_name(src / "cats", b"caf\xe9.jpg")
    os.mkdir(os.path.join(os.fsencode(src), b"bad\xff"))
    jpeg(Path(os.fsdecode(os.path.join(os.fsencode(src), b"bad\xff"))) / "x.jpg", seed=3)
    result = run(src, tmp_path / "out")
    why = {s.path: s.reason for s in result.skipped}
    assert why["cats/caf\\xe9.jpg"] == BAD_NAME == "file name is not valid UTF-8: rename it"
    assert any("bad\\xff" in n and "rename it" in n for n in result.notes)
    report = json.loads((tmp_path / "out/prepare-report.json").read_text(encoding="utf-8"))
    assert report["counts"] == {"train": 4, "val": 2, "test": 2}
    assert read_labels(tmp_path / "out") == ["cats", "dogs"]


def test_symlink_loops_are_notes_not_crashes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"cats": 4, "dogs": 4})
    os.symlink("loop2", src / "loop1")  # top level
    os.symlink("loop1", src / "loop2")
    os.symlink("y.jpg", src / "cats" / "x.jpg")  # in a class folder
    os.symlink("x.jpg", src / "cats" / "y.jpg")
    os.symlink("..", src / "dogs" / "up")  # a folder loop: never followed
    result = run(src, tmp_path / "out")
    assert any(n.startswith("ignored loop1: cannot read it") for n in result.notes)
    why = {s.path: s.reason for s in result.skipped}
    assert why["cats/x.jpg"].startswith("unreadable")
    assert result.counts == {"train": 4, "val": 2, "test": 2}


def test_unreadable_folders_are_noted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"cats": 4, "dogs": 4, "locked": 4})
    jpeg(src / "dogs" / "private" / "p.jpg", seed=99)
    real = os.scandir

    def scandir(path: Any = ".") -> Any:  # chmod 000 is no barrier to root, so deny here
        if os.fspath(path).endswith(("locked", "private")):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = run(src, tmp_path / "out")
    assert "locked: cannot read locked (Permission denied)" in result.notes
    assert "dogs: cannot read dogs/private (Permission denied)" in result.notes
    assert not any("empty class folder locked" in n for n in result.notes)
    assert read_labels(tmp_path / "out") == ["cats", "dogs"]


def test_labels_equal_but_for_case_are_an_error(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"Cat": 2, "dog": 2})
    make_tree(src, {"cat": 2}, seed0=50)
    if len(list(src.iterdir())) < 3:
        pytest.skip("case-insensitive filesystem")
    with pytest.raises(UserError, match=r"folders 'Cat' and 'cat' both give the label 'Cat'"):
        run(src, tmp_path / "out")


def test_control_characters_never_split_labels_txt(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"grey\nwolf": 4, "red  fox": 4})
    run(src, tmp_path / "out")
    assert (tmp_path / "out/labels.txt").read_text().splitlines() == ["grey wolf", "red fox"]


@pytest.mark.parametrize(
    ("tree", "source"),
    [
        ({"train/cat": 4, "train/dog": 4, "val/cat": 2, "val/dog": 2}, "src"),  # split already
        ({"pets/cat": 4, "pets/dog": 4}, "src"),  # one level too high
    ],
)
def test_trees_split_already_or_one_level_too_high_are_refused(
    tmp_path: Path, tree: dict[str, int], source: str
) -> None:
    src = make_tree(tmp_path / "src", tree)
    first = sorted(tree)[0].split("/")[0]
    with pytest.raises(UserError, match=r"split already, or one level too high") as e:
        run(tmp_path / source, tmp_path / "out")
    assert str(src / first) in str(e.value) and "whose sub-folders are the classes" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_images_in_sub_folders_of_some_classes_are_fine(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"cat": 4, "dog/2019": 2, "dog/2020": 2})
    result = run(src, tmp_path / "out")
    assert result.counts == {"train": 4, "val": 2, "test": 2}


def test_only_raster_extensions_are_tried(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"cat": 4, "dog": 4})
    (src / "cat" / "figure.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    (src / "cat" / "paper.pdf").write_bytes(b"%PDF-1.4\n")
    for ext in ("webp", "bmp", "tiff", "gif"):
        jpeg(src / "dog" / f"x.{ext}", seed=7).write_bytes(b"")  # tried: empty file, not skipped
    result = run(src, tmp_path / "out")
    why = {s.path: s.reason for s in result.skipped}
    assert why["cat/figure.eps"] == "not an image file (.eps)"
    assert why["cat/paper.pdf"] == "not an image file (.pdf)"
    assert all(why[f"dog/x.{e}"] == "empty file" for e in ("webp", "bmp", "tiff", "gif"))


def test_one_class_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"cats": 4})
    with pytest.raises(UserError, match="a classifier needs at least two classes"):
        run(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_source_root_in_the_report_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "src", {"cats": 4, "dogs": 4})
    monkeypatch.chdir(tmp_path)
    result = run(Path("src"), Path("out"))
    report = json.loads((tmp_path / "out/prepare-report.json").read_text())
    assert report["source_root"] == str(tmp_path / "src") == str(result.source_root)
    assert len(read_manifest(tmp_path / "out")) == 8
