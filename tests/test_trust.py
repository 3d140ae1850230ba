"""Results a user can trust: arms bound to the sample they ran on, failures that look like
failures, emulated numbers marked everywhere, and a confidence that means the label's."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_support import run_cli
from dataset_fixtures import make_tree
from vlm_classify.backends.openai.chat import label_confidence
from vlm_classify.backends.openai.finetune import FinetuneOptions, finetune
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.dataset.manifest import read_manifest, write_manifest
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.errors import UserError
from vlm_classify.runner import RunnerConfig

MODEL = "openai/gpt-4o-2024-08-06"
FAST = RunnerConfig(
    concurrency=4, max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.01, request_timeout_s=5
)
FAST_FLAGS = ["--concurrency", "4", "--timeout", "5"]


def _prepare(src: Path, out: Path, seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["prepare", str(src), "--out", str(out), "--split", "4,2,2"]
    args += ["--sampling", "random", "--seed", str(seed), "--workers", "1"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err


def _emulate(prepared: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> Emulator:
    emu = Emulator(EmulatorConfig(manifests=[prepared], **kw)).start()  # type: ignore[arg-type]
    for k, v in emu.env().items():
        monkeypatch.setenv(k, v)
    return emu


@pytest.fixture
def dogs(tmp_path: Path, capsys, monkeypatch) -> Iterator[tuple[Path, Path, Emulator]]:
    """A class-per-folder tree prepared with seed 1, and the emulator serving it."""
    src = make_tree(tmp_path / "src", {"beagle": 8, "chihuahua": 8, "pug": 8})
    out = tmp_path / "dogs"
    _prepare(src, out, 1, capsys)
    emu = _emulate(out, monkeypatch, accuracy=0.7)
    try:
        yield src, out, emu
    finally:
        emu.stop()


def _store_rows(prepared: Path) -> list[tuple]:
    with sqlite3.connect(prepared / "runs.sqlite") as db:
        return db.execute("SELECT * FROM predictions ORDER BY arm, item_id").fetchall()


def _classify_args(out: Path, name: str, *extra: str) -> list[str]:
    return ["classify", str(out), "--model", MODEL, "--name", name, *FAST_FLAGS, *extra]


def test_a_reprepared_sample_is_refused_by_classify_and_report_and_nothing_is_lost(
    dogs: tuple[Path, Path, Emulator], capsys
) -> None:
    src, out, _ = dogs
    assert run_cli(_classify_args(out, "zero-shot"), capsys)[0] == 0
    assert run_cli(_classify_args(out, "short", "--prompt", "short"), capsys)[0] == 0
    assert run_cli(["report", str(out)], capsys)[0] == 0
    before_rows = _store_rows(out)
    before_csv = (out / "arms" / "zero-shot" / "predictions.csv").read_bytes()
    old_test = {r.id for r in read_manifest(out) if r.split == "test"}

    _prepare(src, out, 2, capsys)  # another seed: other items in the test split
    new_test = {r.id for r in read_manifest(out) if r.split == "test"}
    assert old_test != new_test

    code, _, err = run_cli(_classify_args(out, "zero-shot"), capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "another sample" in err and "--reset" in err and "--name" in err
    code, _, err = run_cli(["report", str(out)], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "another sample" in err and "--reset" in err
    assert _store_rows(out) == before_rows  # nothing deleted, nothing asked
    assert (out / "arms" / "zero-shot" / "predictions.csv").read_bytes() == before_csv

    # --reset discards the old answers and runs the arm on the new sample
    for name, extra in (("zero-shot", []), ("short", ["--prompt", "short"])):
        code, _, err = run_cli(_classify_args(out, name, "--reset", *extra), capsys)
        assert code == 0, err
        assert "discarded" in err
    code, _, err = run_cli(["report", str(out)], capsys)
    assert code == 0, err
    with (out / "report" / "results.csv").open(newline="") as f:
        assert {r["id"] for r in csv.DictReader(f)} == new_test


def test_a_legacy_arm_is_refused_by_classify_and_flagged_by_report(
    dogs: tuple[Path, Path, Emulator], capsys
) -> None:
    _, out, _ = dogs
    assert run_cli(_classify_args(out, "old"), capsys)[0] == 0
    assert run_cli(_classify_args(out, "new", "--prompt", "short"), capsys)[0] == 0
    # "old" as an earlier version recorded it: no sample identity anywhere
    with sqlite3.connect(out / "runs.sqlite") as db:
        db.execute("UPDATE arms SET sample = NULL WHERE name = 'old'")
    arm_json = out / "arms" / "old" / "arm.json"
    doc = json.loads(arm_json.read_text())
    del doc["sample"]
    arm_json.write_text(json.dumps(doc))

    code, _, err = run_cli(_classify_args(out, "old"), capsys)
    assert code == 1 and "before arms were bound to their sample" in err and "--reset" in err

    code, stdout, err = run_cli(["report", str(out), "--baseline", "new"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["arms"]["old"]["sample_verified"] is False
    assert metrics["arms"]["new"]["sample_verified"] is True
    assert "old" in stdout and "not bound to its sample" in stdout

    # a legacy arm holding an item that is no longer in the test split is refused
    rows = read_manifest(out)
    moved = next(r for r in rows if r.split == "test")
    write_manifest(
        out / "manifest.csv",
        [r.model_copy(update={"split": "train"}) if r.id == moved.id else r for r in rows],
    )
    code, _, err = run_cli(["report", str(out), "--arms", "old"], capsys)
    assert code == 1 and "not in the test split" in err and moved.id in err


def test_a_model_fine_tuned_on_another_sample_is_refused(small_prepared: Path, monkeypatch) -> None:
    emu = _emulate(small_prepared, monkeypatch, ft_seconds=0.1)
    try:
        job = finetune(small_prepared, FinetuneOptions(model=MODEL, name="ft-job", poll_s=0.05))
        ft_model = f"openai/{job.record['fine_tuned_model']}"
        assert job.record["sample"]
        # prepared again: a test item is now a training item, and the other way round
        rows = read_manifest(small_prepared)
        test = next(r for r in rows if r.split == "test")
        train = next(r for r in rows if r.split == "train" and r.label == test.label)
        swap = {test.id: "train", train.id: "test"}
        write_manifest(
            small_prepared / "manifest.csv",
            [r.model_copy(update={"split": swap[r.id]}) if r.id in swap else r for r in rows],
        )
        before = emu.stats.chat_requests
        with pytest.raises(UserError, match=r"fine-tuned .* on another sample"):
            classify(small_prepared, ClassifyOptions(model=ft_model, name="ft", runner=FAST))
        with pytest.raises(UserError, match="another sample"):
            finetune(small_prepared, FinetuneOptions(model=MODEL, name="ft-job", poll_s=0.05))
        assert emu.stats.chat_requests == before
    finally:
        emu.stop()


def test_items_in_error_exit_3_and_lead_the_summary(small_prepared: Path, monkeypatch, capsys):
    # 36 train items at 50% faults, one attempt each: all failing or none has odds 2^-35
    emu = _emulate(small_prepared, monkeypatch, faults="500=0.5", accuracy=1.0)
    try:
        args = [
            "classify",
            str(small_prepared),
            "--model",
            MODEL,
            "--name",
            "zs",
            "--split",
            "train",
        ]
        code, stdout, err = run_cli([*args, "--max-attempts", "1", "--timeout", "5"], capsys)
    finally:
        emu.stop()
    doc = json.loads((small_prepared / "arms" / "zs" / "arm.json").read_text())
    t = doc["totals"]
    assert 0 < t["errors"] < t["items"], "the seeded faults should fail some items, not all"
    assert code == 3
    assert f"zs: {t['errors']} of {t['items']} items failed" in err
    assert "--retry-failed" in err
    # accuracy over the answered items only: the emulator answers every item right
    assert t["accuracy"] == 1.0
    assert f"accuracy 100.00% over {t['answered']} answered of {t['items']} items" in stdout


def test_emulated_arms_are_marked_in_predictions_and_results_csv(small_prepared: Path, monkeypatch):
    emu = _emulate(small_prepared, monkeypatch)
    try:
        result = classify(small_prepared, ClassifyOptions(model=MODEL, name="zs", runner=FAST))
    finally:
        emu.stop()
    with (result.arm_dir / "predictions.csv").open(newline="") as f:
        assert {r["emulated"] for r in csv.DictReader(f)} == {"1"}
    from vlm_classify.report import build_report

    report = build_report(small_prepared)
    with (report.out_dir / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["zs.emulated"] for r in rows} == {"1"}


# --- confidence: the chosen label's probability --------------------------------------------


def _lp(*pieces: tuple[str, float]) -> list[dict]:
    return [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in pieces]


def test_enum_confidence_is_the_product_over_the_label_tokens_only() -> None:
    text = '{"label":"Golden Retriever"}'
    logprobs = _lp(('{"', -0.01), ("label", -0.02), ('":"', -0.03), ("Golden", -0.2))
    logprobs += _lp((" Retriever", -0.1), ('"}', -0.5))
    conf = label_confidence(text, logprobs, "Golden Retriever", "enum")
    assert conf == pytest.approx(math.exp(-0.3))


def test_enum_confidence_finds_an_escaped_label() -> None:
    label = 'Say "hi" Terrier'
    text = json.dumps({"label": label})
    inner = json.dumps(label)[1:-1]
    logprobs = _lp(('{"label": "', -0.5), (inner, -0.25), ('"}', -0.5))
    assert label_confidence(text, logprobs, label, "enum") == pytest.approx(math.exp(-0.25))


def test_text_confidence_only_when_the_answer_is_exactly_the_label() -> None:
    exact = _lp(("Bea", -0.1), ("gle", -0.2))
    assert label_confidence("Beagle", exact, "Beagle", "text") == pytest.approx(math.exp(-0.3))
    sentence = _lp(("It", -0.1), (" is", -0.1), (" a", -0.1), (" Beagle", -0.1), (".", -0.1))
    assert label_confidence("It is a Beagle.", sentence, "Beagle", "text") is None
    assert label_confidence("Beagle", None, "Beagle", "text") is None
    assert label_confidence("Beagle", _lp(("Pug", -0.1)), "Beagle", "text") is None  # mismatch


def test_recorded_confidence_is_the_labels_not_the_whole_answers(
    small_prepared: Path, monkeypatch
) -> None:
    # every answer messy: sentences and markup that name a label, and some that name none
    emu = _emulate(small_prepared, monkeypatch, accuracy=0.5, invalid_rate=1.0)
    try:
        options = ClassifyOptions(model=MODEL, name="zs", answer="text", split="train", runner=FAST)
        result = classify(small_prepared, options)
    finally:
        emu.stop()
    with (result.arm_dir / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    exact = [r for r in rows if r["valid"] == "1" and r["raw_answer"].strip() == r["prediction"]]
    named = [r for r in rows if r["valid"] == "1" and r["raw_answer"].strip() != r["prediction"]]
    assert named, "some answers name a label inside a sentence (the case that can go wrong)"
    assert all(r["confidence"] == "" for r in named)  # a sentence has no single label probability
    assert all(0 < float(r["confidence"]) <= 1 for r in exact)


def test_the_readme_documents_every_exit_code() -> None:
    import re

    from vlm_classify.errors import EXIT_CODES

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Exit codes") :].split("\n## ")[0]
    assert {int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)} == set(EXIT_CODES)


def test_an_emulated_arm_does_not_resume_against_another_service(
    small_prepared: Path, monkeypatch
) -> None:
    emu = _emulate(small_prepared, monkeypatch)
    try:
        classify(small_prepared, ClassifyOptions(model=MODEL, name="zs", limit=2, runner=FAST))
        # the same arm, now pointed at another host (the real API, say): refused, nothing sent
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url.replace("127.0.0.1", "localhost"))
        before = emu.stats.chat_requests
        with pytest.raises(UserError, match="keep those settings"):
            classify(small_prepared, ClassifyOptions(model=MODEL, name="zs", runner=FAST))
        assert emu.stats.chat_requests == before
    finally:
        emu.stop()
