from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vlm_classify.backends.base import Prediction, Usage
from vlm_classify.errors import DataError
from vlm_classify.store import MIGRATIONS, Store


def _p(label: str | None, error: str | None = None) -> Prediction:
    return Prediction(
        prediction=label,
        raw_answer=label or "",
        valid=label is not None,
        confidence=0.9,
        latency_ms=12.5,
        usage=Usage(100, 5),
        error=error,
    )


def test_migrations_run_once_and_record_the_version(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with Store(path) as s:
        assert s.schema_version == len(MIGRATIONS)
    with Store(path) as s:  # reopening does not re-run them
        assert s.schema_version == len(MIGRATIONS)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(DataError, match="newer vlm-classify"):
        Store(path)


def test_predictions_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with Store(path) as s:
        s.upsert_arm("zs", "openai/gpt-4o", "realtime", {"prompt": "full"}, sample="abc")
        s.record("zs", "a/1", "Beagle", _p("Beagle"), attempts=1, mode="realtime")
        s.record("zs", "a/2", "Beagle", _p(None), attempts=2, mode="realtime")
        s.record("zs", "a/3", "Pug", _p(None, error="rate limited"), attempts=6, mode="realtime")
    with Store(path) as s:
        assert s.arm("zs")["settings"] == {"prompt": "full"}
        assert s.arm("zs")["sample"] == "abc"
        assert s.finished_ids("zs") == {"a/1", "a/2", "a/3"}
        assert s.failed_ids("zs") == {"a/3"}
        rows = {r.item_id: r for r in s.predictions("zs")}
        assert rows["a/1"].correct and rows["a/1"].result.usage == Usage(100, 5)
        assert not rows["a/2"].correct and rows["a/2"].attempts == 2
        assert rows["a/3"].result.error == "rate limited"
        s.forget("zs", ["a/3"])
        assert s.finished_ids("zs") == {"a/1", "a/2"}
        assert s.finished_ids("other") == set()


def test_an_arm_from_schema_2_migrates_with_no_sample(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    db = sqlite3.connect(path)
    for sql in MIGRATIONS[:2]:
        db.executescript(sql)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO arms VALUES ('old', 'openai/gpt-4o', 'realtime', '{}', 1.0, 1.0)")
    db.commit()
    db.close()
    with Store(path) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert s.arm("old")["sample"] is None  # recorded before arms were bound to a sample


def test_discarding_an_arm_keeps_the_others(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.sqlite") as s:
        for arm in ("a", "b"):
            s.upsert_arm(arm, "openai/gpt-4o", "batch", {}, sample="x")
            s.record(arm, "i/1", "Pug", _p("Pug"), attempts=1, mode="batch")
            s.put_remote(arm, "batch", "k", "batch_1")
            s.put_remote(arm, "ft_job", "job", "ftjob_1")
        assert s.discard_arm("a", ["batch"]) == 1
        assert s.arm("a") is None and s.finished_ids("a") == set()
        assert s.remote("a", "batch", "k") is None
        assert s.remote("a", "ft_job", "job") is not None  # only the kinds asked for
        assert s.finished_ids("b") == {"i/1"} and s.remote("b", "batch", "k") is not None
        assert not s.has_records("nobody") and s.has_records("b")


def test_remote_objects_upsert(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.sqlite") as s:
        s.put_remote(
            "zs", "batch", "part-001", "batch_1", status="validating", input_file_id="file_1"
        )
        s.put_remote(
            "zs", "batch", "part-001", "batch_1", status="completed", output_file_id="file_2"
        )
        obj = s.remote("zs", "batch", "part-001")
        assert (
            obj is not None
            and obj.status == "completed"
            and obj.data == {"output_file_id": "file_2"}
        )
        assert [o.key for o in s.remotes("zs", "batch")] == ["part-001"]
        assert s.remote("zs", "batch", "part-002") is None
