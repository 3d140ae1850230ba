"""`vlm-classify prepare`: summary output and one-line errors for bad paths and flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset_fixtures import make_tree
from vlm_classify.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["prepare", *args])
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
    assert "warning:" in stderr and "Beagle" in stderr
    assert (out / "manifest.csv").is_file() and (out / "labels.txt").is_file()


def test_strict_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_tree(tmp_path / "src", {"a": 2})
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
    lines = [line for line in stderr.splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1 and expected in lines[0], stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--split", "40,5"], "three counts"),
        (["--split", "40,-5,5"], ">= 0"),
        (["--split", "a,b,c"], "three counts"),
        (["--per-class", "-3"], "--per-class"),
        (["--per-class", "10"], "--split 8,1,1"),
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
