"""The run store: one SQLite file under the prepared directory, with numbered migrations.

Every answer is written the moment it arrives, so an interrupted run resumes without asking (or
paying) for a finished item again; remote objects (uploaded files, batches, fine-tuning jobs) are
recorded as soon as they exist, so a rerun re-attaches to them instead of creating new ones.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.base import Prediction, Usage
from .errors import DataError

STORE_NAME = "runs.sqlite"

MIGRATIONS: list[str] = [
    # 1: arms and their per-item predictions
    """
    CREATE TABLE arms (
        name TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        mode TEXT NOT NULL,
        settings TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE predictions (
        arm TEXT NOT NULL REFERENCES arms(name),
        item_id TEXT NOT NULL,
        label TEXT NOT NULL,
        prediction TEXT,
        raw_answer TEXT NOT NULL,
        valid INTEGER NOT NULL,
        confidence REAL,
        latency_ms REAL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        mode TEXT NOT NULL,
        finished_at REAL NOT NULL,
        PRIMARY KEY (arm, item_id)
    );
    """,
    # 2: remote objects (files, batches, fine-tuning jobs) for re-attaching after a crash
    """
    CREATE TABLE remote_objects (
        arm TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        remote_id TEXT NOT NULL,
        status TEXT,
        data TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (arm, kind, key)
    );
    """,
    # 3: the sample an arm was run on (NULL: recorded before arms were bound to their sample)
    """
    ALTER TABLE arms ADD COLUMN sample TEXT;
    """,
    # 4: the full class distribution of an answer, as a JSON object (NULL: the model gave none)
    """
    ALTER TABLE predictions ADD COLUMN scores TEXT;
    """,
]


@dataclass(frozen=True)
class StoredPrediction:
    """A prediction as recorded, with the item it answers."""

    item_id: str
    label: str
    result: Prediction
    attempts: int
    mode: str
    finished_at: float

    @property
    def correct(self) -> bool:
        return self.result.valid and self.result.prediction == self.label


@dataclass(frozen=True)
class RemoteObject:
    """A file, batch or fine-tuning job created on a provider, as last seen."""

    kind: str
    key: str
    remote_id: str
    status: str | None
    data: dict[str, Any]


class Store:
    """A connection to `DIR/runs.sqlite`. Safe for one writer thread; WAL lets readers share it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as e:
            raise DataError(f"cannot open the run store {self.path}: {e}") from None
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    @classmethod
    def for_dir(cls, prepared_dir: Path) -> Store:
        return cls(Path(prepared_dir) / STORE_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise DataError(
                f"{self.path} was written by a newer vlm-classify (schema {version}): upgrade vlm-classify"
            )
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._tx() as db:
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # arms -------------------------------------------------------------------------------------
    def upsert_arm(
        self, name: str, model: str, mode: str, settings: dict[str, Any], sample: str
    ) -> None:
        """Create or update an arm, bound to the sample (`sample_identity`) it runs on."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO arms (name, model, mode, settings, sample, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "model=excluded.model, mode=excluded.mode, settings=excluded.settings, "
                "sample=excluded.sample, updated_at=excluded.updated_at",
                (name, model, mode, json.dumps(settings, sort_keys=True), sample, now, now),
            )

    def arm(self, name: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT name, model, mode, settings, sample, created_at, updated_at "
            "FROM arms WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        return {
            "name": row[0],
            "model": row[1],
            "mode": row[2],
            "settings": json.loads(row[3]),
            "sample": row[4],
            "created_at": row[5],
            "updated_at": row[6],
        }

    def has_records(self, arm: str) -> bool:
        """Whether the arm has answers or remote objects (anything a rerun would reuse)."""
        for table in ("predictions", "remote_objects"):
            if self._db.execute(f"SELECT 1 FROM {table} WHERE arm = ? LIMIT 1", (arm,)).fetchone():
                return True
        return False

    def discard_arm(self, arm: str, remote_kinds: Iterable[str]) -> int:
        """Delete the arm, its answers and its remote objects of `remote_kinds`; return how many
        answers were deleted."""
        kinds = list(remote_kinds)
        with self._tx() as db:
            n = db.execute("DELETE FROM predictions WHERE arm = ?", (arm,)).rowcount
            db.executemany(
                "DELETE FROM remote_objects WHERE arm = ? AND kind = ?", [(arm, k) for k in kinds]
            )
            db.execute("DELETE FROM arms WHERE name = ?", (arm,))
        return int(n)

    # predictions ------------------------------------------------------------------------------
    def record(
        self, arm: str, item_id: str, label: str, p: Prediction, attempts: int, mode: str
    ) -> None:
        """Persist one answer now (a committed row survives `kill -9`)."""
        self.record_many(arm, [(item_id, label, p)], attempts, mode)

    def record_many(
        self,
        arm: str,
        answers: Iterable[tuple[str, str, Prediction]],
        attempts: int,
        mode: str,
    ) -> None:
        """Persist `(item_id, label, prediction)` answers in one transaction (a local model's
        batch): all of them survive `kill -9`, or none."""
        now = time.time()
        rows = [
            (
                arm,
                item_id,
                label,
                p.prediction,
                p.raw_answer,
                int(p.valid),
                p.confidence,
                p.latency_ms,
                p.usage.prompt_tokens,
                p.usage.completion_tokens,
                attempts,
                p.error,
                mode,
                now,
                None if p.scores is None else json.dumps(p.scores, separators=(",", ":")),
            )
            for item_id, label, p in answers
        ]
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )

    def finished_ids(self, arm: str) -> set[str]:
        """Items with a final answer (errors included: they are retried only on request)."""
        rows = self._db.execute("SELECT item_id FROM predictions WHERE arm = ?", (arm,))
        return {r[0] for r in rows}

    def failed_ids(self, arm: str) -> set[str]:
        rows = self._db.execute(
            "SELECT item_id FROM predictions WHERE arm = ? AND error IS NOT NULL", (arm,)
        )
        return {r[0] for r in rows}

    def forget(self, arm: str, item_ids: Iterable[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM predictions WHERE arm = ? AND item_id = ?",
                [(arm, i) for i in item_ids],
            )

    def predictions(self, arm: str) -> list[StoredPrediction]:
        rows = self._db.execute(
            "SELECT item_id, label, prediction, raw_answer, valid, confidence, latency_ms, "
            "prompt_tokens, completion_tokens, attempts, error, mode, finished_at, scores "
            "FROM predictions WHERE arm = ? ORDER BY item_id",
            (arm,),
        )
        return [
            StoredPrediction(
                item_id=r[0],
                label=r[1],
                result=Prediction(
                    prediction=r[2],
                    raw_answer=r[3],
                    valid=bool(r[4]),
                    confidence=r[5],
                    latency_ms=r[6],
                    usage=Usage(r[7], r[8]),
                    error=r[10],
                    scores=None if r[13] is None else json.loads(r[13]),
                ),
                attempts=r[9],
                mode=r[11],
                finished_at=r[12],
            )
            for r in rows
        ]

    # remote objects ---------------------------------------------------------------------------
    def put_remote(
        self, arm: str, kind: str, key: str, remote_id: str, status: str | None = None, **data: Any
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO remote_objects (arm, kind, key, remote_id, status, data, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(arm, kind, key) DO UPDATE SET "
                "remote_id=excluded.remote_id, status=excluded.status, data=excluded.data, "
                "updated_at=excluded.updated_at",
                (arm, kind, key, remote_id, status, json.dumps(data, sort_keys=True), now, now),
            )

    def forget_remote(self, arm: str, kind: str, key: str | None = None) -> None:
        """Drop stored remote ids (all of `kind` when `key` is None): the server no longer has them."""
        with self._tx() as db:
            if key is None:
                db.execute("DELETE FROM remote_objects WHERE arm = ? AND kind = ?", (arm, kind))
            else:
                db.execute(
                    "DELETE FROM remote_objects WHERE arm = ? AND kind = ? AND key = ?",
                    (arm, kind, key),
                )

    def remote(self, arm: str, kind: str, key: str) -> RemoteObject | None:
        row = self._db.execute(
            "SELECT kind, key, remote_id, status, data FROM remote_objects "
            "WHERE arm = ? AND kind = ? AND key = ?",
            (arm, kind, key),
        ).fetchone()
        return (
            None
            if row is None
            else RemoteObject(row[0], row[1], row[2], row[3], json.loads(row[4]))
        )

    def remotes(self, arm: str, kind: str) -> list[RemoteObject]:
        rows = self._db.execute(
            "SELECT kind, key, remote_id, status, data FROM remote_objects "
            "WHERE arm = ? AND kind = ? ORDER BY key",
            (arm, kind),
        )
        return [RemoteObject(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]
