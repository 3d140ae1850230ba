"""`vlm-classify prepare`: summary output and one-line errors for bad paths and flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset_fixtures import make_tree
from vlm_classify.cli import main


def _run(
    args: list[str], capsys: pytest.CaptureFixture[str], command: str = "prepare"
) -> tuple[int, str, str]:
    try:
        main([command, *args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prepare_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_tree(tmp_path / "src", {"n02085620-Chihuahua": 5, "n02088364-beagle": 3})
    (src / "n02088364-beagle" / "bad.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        [str(src), "--out", str(out), "--split", "2,1,1", "--workers", "1"], capsys
    )
    assert code == 0, stderr
    assert "prepared 7 images of 2 classes" in stdout
    assert "train 3 · val 2 · test 2" in stdout
    assert "bad.jpg: empty file" in stdout
    assert "manifest.csv" in stdout and "prepare-report.json" in stdout
    assert "skipped 1 file, 0 duplicates found, 0 images in two splits" in stdout
    assert "warning:" in stderr and "Beagle" in stderr
    assert (out / "manifest.csv").is_file() and (out / "labels.txt").is_file()


def test_strict_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_tree(tmp_path / "src", {"a": 2, "b": 4})
    code, _, stderr = _run(
        [str(src), "--out", str(tmp_path / "o"), "--split", "2,1,1", "--strict"], capsys
    )
    assert code == 1
    assert "error:" in stderr and "drop --strict" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "no class folders with images"),
        ("file", "is a file"),
    ],
)
def test_bad_sources_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str, expected: str
) -> None:
    src = tmp_path / "src"
    if make == "empty":
        src.mkdir()
    elif make == "file":
        src.write_text("x")
    code, _, stderr = _run([str(src), "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    assert len(stderr.splitlines()) == 1 and expected in stderr, stderr  # no blank line first


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--split", "40,5"], "three counts"),
        (["--split", "40,-5,5"], ">= 0"),
        (["--split", "a,b,c"], "three counts"),
        (["--per-class", "-3"], "--per-class"),
        (["--per-class", "10", "--split", "40,5,5"], "such as 8,1,1"),
        (["--split", "0,0,0"], "positive sum"),
        (["--max-side", "0"], "--max-side"),
        (["--sampling", "best"], "--sampling"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_bad_flags_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    src = make_tree(tmp_path / "src", {"a": 1})
    code, _, stderr = _run([str(src), "--out", str(tmp_path / "out"), *flags], capsys)
    assert code == 2
    assert expected in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_per_class_alone_gives_an_80_10_10_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_tree(tmp_path / "src", {"a": 10, "b": 10})
    code, stdout, stderr = _run(
        [str(src), "--out", str(tmp_path / "out"), "--per-class", "10", "--workers", "1"], capsys
    )
    assert code == 0, stderr
    assert "train 16 · val 2 · test 2" in stdout


def test_notes_are_printed_and_many_short_classes_fold_into_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_tree(tmp_path / "src", {f"class_{i}": 3 for i in range(6)})
    (src / "README.txt").write_text("hello")
    code, stdout, stderr = _run(
        [str(src), "--out", str(tmp_path / "out"), "--split", "4,1,1", "--workers", "1"], capsys
    )
    assert code == 0, stderr
    assert "ignored top-level file README.txt" in stdout  # the note itself, not a count
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, stderr
    assert "6 classes have fewer than 6 usable images (class 0: 3" in warnings[0]
    assert "and 1 more" in warnings[0]


def test_sample_output_fits_the_default_prepare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, stderr = _run(
        [str(tmp_path / "sample"), "--classes", "2", "--per-class", "4"], capsys, command="sample"
    )
    assert code == 0, stderr
    assert "deliberately bad files" in stdout and "truncated" in stdout
    (next_line,) = [line for line in stdout.splitlines() if line.startswith("next: ")]
    command = next_line.removeprefix("next: vlm-classify ").split()
    assert command[-2:] == ["--per-class", "4"]
    code, stdout, stderr = _run([*command[1:], "--workers", "1"], capsys)
    assert code == 0, stderr
    assert "prepared 8 images of 2 classes" in stdout and "warning" not in stderr
    assert "skipped 4 files" in stdout  # every deliberate defect is reached and reported


def test_sample_defaults_to_50_per_class() -> None:
    from vlm_classify.cli.sample import sample_cmd

    per_class = next(p for p in sample_cmd.params if p.name == "per_class")
    assert per_class.default == 50  # prepare's default split 40,5,5 takes exactly that
