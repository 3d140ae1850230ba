"""`prepare`: validation, normalisation, duplicates, splits, determinism, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dataset_fixtures import (
    exif_rotated,
    image_files,
    jpeg,
    listed,
    make_tree,
    rgb_image,
    rgba_png,
    rows_of,
    save,
    snapshot,
    truncated_jpeg,
    with_other_class,
)
from vlm_classify.dataset import prepare as prepare_mod
from vlm_classify.dataset.manifest import read_labels, read_manifest
from vlm_classify.dataset.prepare import PrepareOptions, PrepareResult, prepare
from vlm_classify.dataset.splits import split_counts
from vlm_classify.errors import UserError


def run(src: Path, out: Path, **opts: Any) -> PrepareResult:
    """prepare() in-process (workers=1) unless the test says otherwise."""
    opts.setdefault("workers", 1)
    opts.setdefault("split", (2, 1, 1))
    return prepare(src, out, PrepareOptions(**opts))


def skipped(result: PrepareResult) -> dict[str, str]:
    return {s.path: s.reason for s in result.skipped}


def rows_by_source(out: Path) -> dict[str, Any]:
    return {r.source_path: r for r in read_manifest(out)}


# --- bad and odd inputs ----------------------------------------------------------------------


def test_bad_files_are_skipped_with_reasons_and_never_counted(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"n02085620-Chihuahua": 4, "n02088364-beagle": 4})
    cls = src / "n02085620-Chihuahua"
    (cls / "a_empty.jpg").write_bytes(b"")
    truncated_jpeg(cls / "a_truncated.jpg")
    (cls / "a_text.jpg").write_text("definitely not a jpeg\n")
    jpeg(cls / ".hidden.jpg", seed=5)
    (cls / "readme.txt").write_text("notes")
    result = run(src, tmp_path / "out")
    why = skipped(result)
    assert why["n02085620-Chihuahua/a_empty.jpg"] == "empty file"
    assert why["n02085620-Chihuahua/a_truncated.jpg"].startswith("corrupt or truncated image")
    assert why["n02085620-Chihuahua/a_text.jpg"] == "not an image"
    assert why["n02085620-Chihuahua/readme.txt"].startswith("not an image file")
    assert not any(".hidden" in p for p in why)
    assert any("hidden" in n for n in result.notes)
    rows = rows_of(tmp_path / "out", "n02085620-Chihuahua")
    assert len(rows) == 4 and all(
        r.source_path.startswith("n02085620-Chihuahua/img_") for r in rows
    )
    assert result.per_class["Chihuahua"] == {"train": 2, "val": 1, "test": 1}


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("cmyk.jpg", lambda p: save(rgb_image(seed=1).convert("CMYK"), p, "JPEG")),
        ("grey.jpg", lambda p: save(rgb_image(seed=2).convert("L"), p, "JPEG")),
        ("palette.png", lambda p: save(rgb_image(seed=3).convert("P"), p, "PNG")),
        ("greyalpha.png", lambda p: save(rgb_image(seed=4).convert("LA"), p, "PNG")),
        ("rgb.png", lambda p: save(rgb_image(seed=5), p, "PNG")),
        ("grey16.png", lambda p: save(Image.new("I;16", (8, 8), 30000), p, "PNG")),
    ],
)
def test_every_mode_becomes_an_rgb_jpeg(tmp_path: Path, name: str, make: Any) -> None:
    src = with_other_class(tmp_path / "src")
    make(src / "dogs" / name)
    run(src, tmp_path / "out", split=(1, 0, 0))
    (row,) = rows_of(tmp_path / "out", "dogs")
    with Image.open(tmp_path / "out" / row.image_path) as out:
        assert (out.format, out.mode) == ("JPEG", "RGB")
        assert not out.getexif()
        assert out.size == (row.width, row.height)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rgba_png(src / "dogs" / "rgba.png")
    pal = Image.new("P", (20, 10), 0)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 10))
    save(pal, src / "dogs" / "pal.gif", "GIF", transparency=0)
    run(with_other_class(src), tmp_path / "out", split=(2, 0, 0))
    for row in rows_of(tmp_path / "out", "dogs"):
        with Image.open(tmp_path / "out" / row.image_path) as out:
            r, g, b = out.convert("RGB").getpixel((17, 5))
            assert min(r, g, b) > 240, row.source_path  # transparent half is white, not black
            r, g, b = out.convert("RGB").getpixel((2, 5))
            assert g > 150 and r < 60, row.source_path


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    src = tmp_path / "src"
    exif_rotated(src / "dogs" / "rot.jpg")
    run(with_other_class(src), tmp_path / "out", split=(1, 0, 0))
    (row,) = rows_of(tmp_path / "out", "dogs")
    assert (row.width, row.height) == (20, 40)  # portrait after rotating 90° clockwise
    with Image.open(tmp_path / "out" / row.image_path) as out:
        assert out.size == (20, 40)
        top, bottom = out.getpixel((10, 3)), out.getpixel((10, 36))
        assert top[0] > 200 and top[2] < 60  # stored left (red) is now on top
        assert bottom[2] > 200 and bottom[0] < 60
        assert 0x0112 not in out.getexif()


def test_large_image_is_downscaled_and_small_jpeg_kept_byte_for_byte(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(rgb_image((400, 300), seed=1), src / "dogs" / "big.jpg", "JPEG", quality=95)
    small = jpeg(src / "dogs" / "small.jpg", seed=2, size=(60, 40))
    result = run(with_other_class(src), tmp_path / "out", split=(2, 0, 0), max_side=64)
    rows = rows_by_source(tmp_path / "out")
    big = rows["dogs/big.jpg"]
    assert (big.width, big.height) == (64, 48)
    kept = rows["dogs/small.jpg"]
    assert (tmp_path / "out" / kept.image_path).read_bytes() == small.read_bytes()
    assert kept.image_sha256 == kept.source_sha256
    assert result.copied == 1 + 2  # and the two small JPEGs of the other class


def test_huge_jpeg_uses_reduced_decoding_and_still_fits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(rgb_image((1100, 700), seed=3), src / "dogs" / "huge.jpg", "JPEG", quality=90)
    run(with_other_class(src), tmp_path / "out", split=(1, 0, 0), max_side=100)
    (row,) = rows_of(tmp_path / "out", "dogs")
    assert (row.width, row.height) == (100, 64)


# --- duplicates and leakage ------------------------------------------------------------------


def test_duplicates_within_and_across_classes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"beagle": 5, "borzoi": 5})
    # a byte copy inside one class, sorted after its original
    (src / "beagle" / "z_copy.jpg").write_bytes((src / "beagle" / "img_000.jpg").read_bytes())
    # the same pixels with different bytes (PNG at two compression levels) inside one class
    pix = rgb_image(seed=4242)
    save(pix, src / "borzoi" / "a_pix.png", "PNG", compress_level=1)
    save(pix, src / "borzoi" / "a_pix2.png", "PNG", compress_level=9)
    # the same file under two labels
    (src / "borzoi" / "shared.jpg").write_bytes((src / "beagle" / "img_001.jpg").read_bytes())
    result = run(src, tmp_path / "out")
    why = skipped(result)
    assert why["beagle/z_copy.jpg"] == "duplicate of beagle/img_000.jpg"
    assert why["borzoi/a_pix2.png"] == "duplicate of borzoi/a_pix.png"
    assert "conflicting labels" in why["beagle/img_001.jpg"]
    assert "conflicting labels" in why["borzoi/shared.jpg"]
    kinds = {(d["kind"], d["by"]) for d in result.duplicates}
    assert kinds == {
        ("within-class", "bytes"),
        ("within-class", "pixels"),
        ("across-classes", "bytes"),
    }
    sources = {r.source_path for r in read_manifest(tmp_path / "out")}
    assert not sources & {"beagle/img_001.jpg", "borzoi/shared.jpg", "beagle/z_copy.jpg"}
    assert result.leakage == []


def test_pixel_duplicate_across_classes_is_excluded_and_refilled(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"beagle": 5, "borzoi": 5})
    pix = rgb_image(seed=777)
    save(pix, src / "beagle" / "a_same.png", "PNG", compress_level=1)
    save(pix, src / "borzoi" / "a_same.png", "PNG", compress_level=9)
    result = run(src, tmp_path / "out")
    assert {(d["kind"], d["by"]) for d in result.duplicates} == {("across-classes", "pixels")}
    assert result.counts == {"train": 4, "val": 2, "test": 2}  # both classes refilled to 4
    assert "a_same" not in "".join(r.source_path for r in read_manifest(tmp_path / "out"))


def test_no_image_is_in_two_splits(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": 12, "b": 12})
    for i in range(4):  # copies that a naive sampler would spread over splits
        (src / "a" / f"z_copy_{i}.jpg").write_bytes((src / "a" / "img_000.jpg").read_bytes())
    result = run(src, tmp_path / "out", split=(8, 4, 4), sampling="random")
    assert result.leakage == []
    why = skipped(result)
    assert all(why[f"a/z_copy_{i}.jpg"] == "duplicate of a/img_000.jpg" for i in range(4))
    report = json.loads((tmp_path / "out" / "prepare-report.json").read_text())
    assert report["leakage"] == []
    split_of: dict[str, str] = {}
    for r in read_manifest(tmp_path / "out"):
        assert split_of.setdefault(r.image_sha256, r.split) == r.split
        assert split_of.setdefault(r.source_sha256, r.split) == r.split


# --- counts, splits, warnings ----------------------------------------------------------------


def test_split_counts_fill_evaluation_first() -> None:
    assert split_counts(50, (40, 5, 5)) == {"train": 40, "val": 5, "test": 5}
    assert split_counts(30, (40, 5, 5)) == {"train": 20, "val": 5, "test": 5}
    assert split_counts(7, (40, 5, 5)) == {"train": 0, "val": 2, "test": 5}
    assert split_counts(0, (40, 5, 5)) == {"train": 0, "val": 0, "test": 0}


def test_too_few_images_warns_and_strict_fails(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"beagle": 6, "borzoi": 3})
    result = run(src, tmp_path / "out", split=(4, 1, 1))
    assert result.per_class["borzoi"] == {"train": 1, "val": 1, "test": 1}
    (warning,) = result.warnings
    assert "borzoi" in warning and "3 usable" in warning
    with pytest.raises(UserError, match=r"borzoi: 3.*drop --strict"):
        run(src, tmp_path / "out2", split=(4, 1, 1), strict=True)
    assert not (tmp_path / "out2" / "manifest.csv").exists()


def test_failed_strict_rerun_keeps_the_previous_sample(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"beagle": 6, "borzoi": 6})
    run(src, tmp_path / "out", split=(2, 1, 1))
    before = snapshot(tmp_path / "out")
    with pytest.raises(UserError, match=r"prepare-report\.failed\.json"):
        run(src, tmp_path / "out", split=(6, 1, 1), strict=True, sampling="random")
    assert snapshot(tmp_path / "out") == before
    assert image_files(tmp_path / "out") == listed(tmp_path / "out")  # its own images taken back
    failed = json.loads((tmp_path / "out/prepare-report.failed.json").read_text())
    assert failed["settings"]["strict"] is True


def test_notes_for_empty_class_folder_and_stray_file(tmp_path: Path) -> None:
    src = with_other_class(make_tree(tmp_path / "src", {"beagle": 4}))
    (src / "empty_breed").mkdir()
    (src / "README.txt").write_text("hello")
    result = run(src, tmp_path / "out")
    assert any("empty class folder empty_breed" in n for n in result.notes)
    assert any("top-level file README.txt" in n for n in result.notes)
    assert read_labels(tmp_path / "out") == ["beagle", "zz other"]


@pytest.mark.parametrize("layout", ["empty", "files-only", "missing"])
def test_unusable_sources_are_one_line_user_errors(tmp_path: Path, layout: str) -> None:
    src = tmp_path / "src"
    if layout != "missing":
        src.mkdir()
    if layout == "files-only":
        jpeg(src / "loose.jpg")
    with pytest.raises(UserError) as e:
        run(src, tmp_path / "out")
    assert "\n" not in str(e.value) and "class" in str(e.value)


def test_out_inside_source_is_refused(tmp_path: Path) -> None:
    src = with_other_class(make_tree(tmp_path / "src", {"beagle": 4}))
    with pytest.raises(UserError, match="inside the source"):
        run(src, src / "prepared")


# --- labels and layout -----------------------------------------------------------------------


def test_labels_synsets_and_ids(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "Images",
        {"n02089078-black-and-tan_coonhound": 4, "n02085620-Chihuahua": 4, "golden_retriever": 4},
    )
    jpeg(src / "golden_retriever" / "img_000.png")  # stem collision with img_000.jpg
    run(src, tmp_path / "out")
    labels = read_labels(tmp_path / "out")
    assert labels == ["Black-And-Tan Coonhound", "Chihuahua", "golden retriever"]
    rows = read_manifest(tmp_path / "out")
    coon = next(r for r in rows if r.label == "Black-And-Tan Coonhound")
    assert coon.synset == "n02089078" and coon.id.startswith("n02089078/")
    assert coon.image_path == f"images/{coon.id}-{coon.image_sha256[:12]}.jpg"
    golden = {r.id for r in rows if r.label == "golden retriever"}
    assert {"golden-retriever/img_000", "golden-retriever/img_000-2"} <= golden
    assert [r.split for r in rows] == sorted(
        (r.split for r in rows), key=["train", "val", "test"].index
    )


def test_two_folders_with_one_label_is_an_error(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"golden_retriever": 2, "golden retriever": 2})
    with pytest.raises(UserError, match="both give the label 'golden retriever'"):
        run(src, tmp_path / "out")


def test_stanford_layout_detected_from_parent_or_images(tmp_path: Path) -> None:
    make_tree(tmp_path / "stanford" / "Images", {"n02085620-Chihuahua": 4, "n02088364-beagle": 4})
    (tmp_path / "stanford" / "Annotation").mkdir()
    a = run(tmp_path / "stanford", tmp_path / "out_a")
    b = run(tmp_path / "stanford" / "Images", tmp_path / "out_b")
    assert a.layout == b.layout == "stanford-dogs"
    assert (tmp_path / "out_a/manifest.csv").read_bytes() == (
        tmp_path / "out_b/manifest.csv"
    ).read_bytes()
    assert read_labels(tmp_path / "out_a") == ["Beagle", "Chihuahua"]


# --- determinism, sampling, reruns -----------------------------------------------------------


def test_reruns_are_byte_identical_and_write_nothing(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": 6, "b": 6})
    save(rgb_image((300, 200), seed=1), src / "a" / "big.jpg", "JPEG")  # re-encoded, not copied
    first = run(src, tmp_path / "out", max_side=64)
    manifest = (tmp_path / "out/manifest.csv").read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out/images").rglob("*.jpg")}
    second = run(src, tmp_path / "out", max_side=64)
    assert first.written == 8 and second.written == 0
    assert (tmp_path / "out/manifest.csv").read_bytes() == manifest
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out/images").rglob("*.jpg")} == mtimes
    run(src, tmp_path / "other", max_side=64)
    assert (tmp_path / "other/manifest.csv").read_bytes() == manifest
    assert b"/tmp" not in manifest and str(tmp_path).encode() not in manifest


def test_sampling_first_random_and_seed(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": 15, "b": 15})

    def chosen(**opts: Any) -> list[str]:
        out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}"
        run(src, out, **opts)
        return [r.source_path for r in read_manifest(out)]

    first = chosen(sampling="first")
    assert sorted(p for p in first if p.startswith("a/")) == [
        f"a/img_{i:03d}.jpg" for i in range(4)
    ]
    rand42 = chosen(sampling="random", seed=42)
    assert rand42 != first
    assert chosen(sampling="random", seed=42) == rand42
    assert chosen(sampling="random", seed=7) != rand42


def test_rerun_with_smaller_sample_removes_stale_images(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": 6, "b": 4})
    run(src, tmp_path / "out", split=(4, 1, 1))
    result = run(src, tmp_path / "out", split=(2, 1, 1))
    assert image_files(tmp_path / "out") == listed(tmp_path / "out")
    assert any("removed 2 file(s)" in n for n in result.notes)


def test_worker_processes_give_the_same_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_tree(tmp_path / "src", {"a": 10, "b": 10, "c": 10})
    truncated_jpeg(src / "b" / "img_000x.jpg")
    monkeypatch.setattr(prepare_mod, "POOL_MIN_IMAGES", 4)
    calls: list[tuple[str, int, int]] = []
    run(src, tmp_path / "inline", split=(6, 1, 1))
    prepare(
        src,
        tmp_path / "pool",
        PrepareOptions(split=(6, 1, 1), workers=2),
        progress=lambda *a: calls.append(a),
    )
    assert (tmp_path / "inline/manifest.csv").read_bytes() == (
        tmp_path / "pool/manifest.csv"
    ).read_bytes()
    assert calls[-1] == ("images", 25, 25)
    assert any(c[0] == "hash" for c in calls)


def test_report_contents(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": 4, "b": 4})
    run(src, tmp_path / "out")
    report = json.loads((tmp_path / "out/prepare-report.json").read_text())
    assert report["settings"]["split"] == [2, 1, 1]
    assert report["counts"] == {"train": 4, "val": 2, "test": 2}
    assert report["per_class"]["a"] == {"train": 2, "val": 1, "test": 1}
    assert set(report["timings"]) >= {"hash_s", "images_s", "total_s"}
    assert report["images_per_s"] > 0 and report["leakage"] == []


def test_stanford_dogs_word_uses_the_downloader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extracted = make_tree(
        tmp_path / "cache" / "Images", {"n02085620-Chihuahua": 4, "n02088364-beagle": 4}
    ).parent
    seen: dict[str, Any] = {}

    def fake_download(cache_dir: Path | None, **kwargs: Any) -> Path:
        seen["cache_dir"] = cache_dir
        return extracted

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prepare_mod, "download_stanford_dogs", fake_download)
    result = run("stanford-dogs", tmp_path / "out", cache_dir=tmp_path / "c")  # type: ignore[arg-type]
    assert seen["cache_dir"] == tmp_path / "c"
    assert result.layout == "stanford-dogs" and result.counts["train"] == 4


def test_options_validation() -> None:
    with pytest.raises(ValueError, match=r"disagrees.*such as 8,1,1"):
        PrepareOptions(per_class=10, split=(40, 5, 5))
    assert PrepareOptions(per_class=10).split == (8, 1, 1)  # alone, per-class gives 80/10/10
    assert PrepareOptions(per_class=10, split=None).split == (8, 1, 1)  # type: ignore[arg-type]
    assert PrepareOptions(split=None).split == (40, 5, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PrepareOptions(split=(-1, 5, 5))
    with pytest.raises(ValueError):
        PrepareOptions(max_side=0)
    assert PrepareOptions(per_class=50).count == 50
