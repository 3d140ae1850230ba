"""Writes are atomic: a crash while a file is written, or at its rename, leaves the previous file
whole (or none) and no stray temporary file; end to end for an arm's files, a job record, a
latency table and the report, and under a real kill -9."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import make_prepared_dir
from report_support import write_arm, wrong
from vlm_classify import arms, files
from vlm_classify.arms import read_job, write_arm_files, write_job
from vlm_classify.backends.base import Prediction, Usage
from vlm_classify.files import (
    atomic_open,
    atomic_path,
    staged_into,
    write_bytes_atomic,
    write_text_atomic,
)
from vlm_classify.latency import write_csv
from vlm_classify.report import ReportOptions, build_report
from vlm_classify.report.load import available_arms
from vlm_classify.store import Store

_real_replace = os.replace


class Crash(Exception):
    """Stands for the process dying at that point."""


def _names(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _replace_failing_for(name: str, exc: BaseException) -> Any:
    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == name:
            raise exc
        _real_replace(src, dst)

    return replace


# --- files.py -----------------------------------------------------------------------------------


def test_new_content_appears_whole_and_nothing_else_is_left(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    write_bytes_atomic(tmp_path / "data.bin", b"\x00\x01")
    assert (tmp_path / "data.bin").read_bytes() == b"\x00\x01"
    assert _names(tmp_path) == ["data.bin", "record.json"]


def test_the_target_is_untouched_until_the_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with atomic_open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow(["a", "b"])
        assert not path.exists()
        (tmp,) = [p for p in tmp_path.iterdir()]
        assert tmp.name.startswith(".rows.csv.") and tmp.name.endswith(".tmp")  # hidden
    assert path.read_text(encoding="utf-8") == "a,b\n"
    assert _names(tmp_path) == ["rows.csv"]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_failure_mid_write_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, mode: str
) -> None:
    path = tmp_path / "out.dat"
    path.write_bytes(b"old whole content\n")
    with pytest.raises(Crash), atomic_open(path, mode) as f:
        f.write("half" if mode == "w" else b"half")
        raise Crash
    assert path.read_bytes() == b"old whole content\n"
    assert _names(tmp_path) == ["out.dat"]


def test_a_failure_at_the_flush_or_the_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"old": 1}\n', encoding="utf-8")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(files.os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space"):
            write_text_atomic(path, '{"new": 2}\n')
    assert json.loads(path.read_text(encoding="utf-8")) == {"old": 1}
    with monkeypatch.context() as m:
        m.setattr(files.os, "replace", _replace_failing_for("metrics.json", KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            write_bytes_atomic(path, b'{"new": 2}\n')
    assert json.loads(path.read_text(encoding="utf-8")) == {"old": 1}
    assert _names(tmp_path) == ["metrics.json"]


def test_a_new_file_that_fails_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(Crash), atomic_open(tmp_path / "new.csv") as f:
        f.write("id,label\n")
        raise Crash
    assert _names(tmp_path) == []


def test_only_write_modes_are_taken(tmp_path: Path) -> None:
    for mode in ("a", "r", "w+", "x"):
        with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "f", mode):
            pass
    assert _names(tmp_path) == []


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old weights")
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"new weights")
    assert path.read_bytes() == b"new weights"
    with pytest.raises(Crash), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise Crash
    assert path.read_bytes() == b"new weights"
    with pytest.raises(FileNotFoundError), atomic_path(path):
        pass  # the writer wrote nothing: no rename
    assert path.read_bytes() == b"new weights"
    assert _names(tmp_path) == ["model.safetensors"]


def test_staged_into_moves_a_whole_set_of_files_or_none(tmp_path: Path) -> None:
    model = tmp_path / "arm" / "model"
    with staged_into(model) as staging:
        (staging / "adapter_config.json").write_text("{}", encoding="utf-8")
        (staging / "adapter_model.safetensors").write_bytes(b"v1")
    assert _names(tmp_path / "arm") == [
        "model",
        "model/adapter_config.json",
        "model/adapter_model.safetensors",
    ]
    with pytest.raises(Crash), staged_into(model) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"v2 half")
        raise Crash
    assert (model / "adapter_model.safetensors").read_bytes() == b"v1"
    assert ".model.staging" not in _names(tmp_path / "arm")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_kill_mid_write_leaves_the_previous_record_whole(tmp_path: Path) -> None:
    """A real kill -9 after the new bytes are written, before the rename: the old finetune.json
    is what the rerun reads, and the temp file left behind is hidden and matches no reader."""
    out = tmp_path / "arms" / "job"
    out.mkdir(parents=True)
    write_job(out, {"status": "running", "id": "ftjob-1"})
    code = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from vlm_classify import files
        from vlm_classify.arms import write_job

        files.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        write_job(Path(sys.argv[1]), {"status": "succeeded", "pad": list(range(5000))})
        """
    )
    r = subprocess.run([sys.executable, "-c", code, str(out)], check=False, timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert read_job(out) == {"status": "running", "id": "ftjob-1"}
    (left,) = [p.name for p in out.iterdir() if p.name != arms.FINETUNE_JSON]
    assert left.startswith(".finetune.json.") and left.endswith(".tmp")
    assert list(tmp_path.glob(f"arms/*/{arms.FINETUNE_JSON}")) == [out / arms.FINETUNE_JSON]
    write_job(out, {"status": "succeeded"})  # the next write is not hindered by it
    assert read_job(out) == {"status": "succeeded"}


# --- the library's records ----------------------------------------------------------------------


def _p(label: str) -> Prediction:
    return Prediction(
        prediction=label,
        raw_answer=label,
        valid=True,
        confidence=0.9,
        latency_ms=12.5,
        usage=Usage(100, 5),
    )


def _store_with(tmp_path: Path, answers: list[str]) -> Store:
    store = Store(tmp_path / "runs.sqlite")
    store.upsert_arm("zs", "openai/gpt-4o", "realtime", {"prompt": "full"}, sample="abc")
    for i, answer in enumerate(answers):
        store.record("zs", f"a/{i}", "Beagle", _p(answer), attempts=1, mode="realtime")
    return store


def test_a_crash_while_writing_predictions_keeps_the_arm_files_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = tmp_path / "p"
    with _store_with(tmp_path, ["Beagle"] * 5) as store:
        out, _ = write_arm_files(prepared, store, "zs", {"emulated": True})
        before = (out / "predictions.csv").read_bytes()
        for i in range(5, 40):
            store.record("zs", f"a/{i}", "Beagle", _p("Pug"), attempts=1, mode="realtime")

        def dies_after_rows(f: Any, **kw: Any) -> Any:
            w = csv.writer(f, **kw)
            rows = 0

            def writerow(row: list[Any]) -> Any:
                nonlocal rows
                rows += 1
                if rows > 10:
                    raise Crash  # the process dies with 10 rows in the file
                return w.writerow(row)

            return SimpleNamespace(writerow=writerow)

        with monkeypatch.context() as m:
            m.setattr(arms, "csv", SimpleNamespace(writer=dies_after_rows))
            with pytest.raises(Crash):
                write_arm_files(prepared, store, "zs", {"emulated": True})
        assert (out / "predictions.csv").read_bytes() == before
        with monkeypatch.context() as m:
            m.setattr(files.os, "replace", _replace_failing_for("predictions.csv", Crash()))
            with pytest.raises(Crash):
                write_arm_files(prepared, store, "zs", {"emulated": True})
        assert (out / "predictions.csv").read_bytes() == before
        with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == 5
        assert json.loads((out / "arm.json").read_text(encoding="utf-8"))["emulated"] is True
        assert _names(out) == ["arm.json", "predictions.csv"]
        write_arm_files(prepared, store, "zs", {"emulated": True})
        with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == 40


def test_a_first_arm_cut_short_is_not_taken_for_an_arm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """arm.json (which says `emulated`) is written before predictions.csv, the file that makes a
    folder an arm: a crash between them never leaves an emulated arm reported as a real one."""
    prepared = tmp_path / "p"
    with _store_with(tmp_path, ["Beagle"] * 3) as store:
        monkeypatch.setattr(files.os, "replace", _replace_failing_for("predictions.csv", Crash()))
        with pytest.raises(Crash):
            write_arm_files(prepared, store, "zs", {"emulated": True})
    assert available_arms(prepared) == []
    assert _names(prepared / "arms" / "zs") == ["arm.json"]


def test_a_crash_writing_a_job_record_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_job(tmp_path, {"status": "running", "id": "ftjob-1"})
    for name, exc in (("replace", KeyboardInterrupt()), ("fsync", OSError(errno.EIO, "I/O"))):
        with monkeypatch.context() as m:

            def fail(*_a: Any, _exc: BaseException = exc) -> None:
                raise _exc

            m.setattr(files.os, name, fail)
            with pytest.raises(type(exc)):
                write_job(tmp_path, {"status": "succeeded", "id": "ftjob-1"})
        assert read_job(tmp_path) == {"status": "running", "id": "ftjob-1"}
        assert _names(tmp_path) == ["finetune.json"]


def test_a_crash_writing_a_latency_table_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "latency.csv"
    write_csv(path, [{"model": "m", "p50": 1.5}], ["model", "p50"])
    before = path.read_bytes()
    monkeypatch.setattr(files.os, "replace", _replace_failing_for("latency.csv", Crash()))
    with pytest.raises(Crash):
        write_csv(path, [{"model": "m", "p50": 9.0}] * 100, ["model", "p50"])
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["latency.csv"]


LABELS = ["Beagle", "Chihuahua", "Golden Retriever", "Pug"]


def test_a_crash_while_the_report_is_written_leaves_every_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_prepared_dir(tmp_path / "p", LABELS, {"train": 1, "test": 5}, size=(40, 30))
    write_arm(root, "a", lambda i, label, labels: label)
    write_arm(root, "b", lambda i, label, labels: wrong(label, labels) if i % 3 else label)
    out = build_report(root, ReportOptions(volume=1000)).out_dir
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"report.html", "report.md", "metrics.json", "results.csv"} <= {p.name for p in first}

    # Disk full while the first file (a plot) is written: nothing of the report changes.
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(files.os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space"):
            build_report(root, ReportOptions(volume=2000))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first

    # Killed at the last rename: report.html is the previous one, whole; the rest is new.
    with monkeypatch.context() as m:
        m.setattr(files.os, "replace", _replace_failing_for("report.html", KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            build_report(root, ReportOptions(volume=2000))
    assert (out / "report.html").read_bytes() == first[out / "report.html"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["cost"]["volume_per_month"] == 2000
    assert not [n for n in _names(out) if Path(n).name.startswith(".")]
    build_report(root, ReportOptions(volume=2000))
    assert (out / "report.html").read_bytes() != first[out / "report.html"]


def test_a_cnn_checkpoint_cut_short_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from vlm_classify.backends.local import cnn_train

    path = tmp_path / "checkpoint.pt"
    cnn_train._save(path, {"epoch": 1, "w": torch.zeros(3)})
    real_save = torch.save

    def dies_mid_save(obj: Any, f: Any) -> None:
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:50])  # a torn file
        raise Crash

    monkeypatch.setattr(cnn_train.torch, "save", dies_mid_save)
    with pytest.raises(Crash):
        cnn_train._save(path, {"epoch": 2, "w": torch.ones(3)})
    assert torch.load(path)["epoch"] == 1
    assert _names(tmp_path) == ["checkpoint.pt"]
