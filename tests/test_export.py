"""`export`: fine-tuning files and Batch input, every line checked against the OpenAI spec."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import make_jpeg, make_prepared_dir
from vlm_classify.backends.openai import wire as w
from vlm_classify.backends.openai.export import ExportLimits, ExportOptions, export
from vlm_classify.cli import main
from vlm_classify.dataset.manifest import MANIFEST_NAME, read_manifest, write_manifest
from vlm_classify.errors import DataError, UserError
from vlm_classify.prompts import system_prompt

MODEL = "openai/gpt-4o-2024-08-06"
LABELS = ["Beagle", "Chihuahua", "Golden Retriever"]


def _lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "\n\n" not in text
    return [json.loads(line) for line in text.splitlines()]


def _image_of(line: dict[str, Any]) -> tuple[bytes, str]:
    messages = line["body"]["messages"] if "body" in line else line["messages"]
    image = messages[1]["content"][0]["image_url"]
    prefix, b64 = image["url"].split(",", 1)
    assert prefix == "data:image/jpeg;base64"
    return base64.b64decode(b64, validate=True), image["detail"]


def _check_all(
    result_dir: Path, model: str = "gpt-4o-2024-08-06"
) -> dict[str, list[dict[str, Any]]]:
    """Every line of every file, fully validated against the spec; returns them by file name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((result_dir / "jsonl").glob("*.jsonl")):
        lines = _lines(path)
        for i, line in enumerate(lines):
            if path.name.startswith("test-batch"):
                errors = w.batch_line_errors(line)
            else:
                errors = w.finetune_line_errors(line, model=model)
            assert errors == [], f"{path.name} line {i + 1}: {errors}"
        out[path.name] = lines
    return out


def test_export_writes_valid_files(small_prepared: Path) -> None:
    result = export(small_prepared, ExportOptions(model=MODEL))
    files = _check_all(small_prepared)
    assert sorted(files) == ["test-batch.jsonl", "train.jsonl", "val.jsonl"]
    assert result.warnings == []
    rows = {r.id: r for r in read_manifest(small_prepared)}
    by_split = {s: [r for r in rows.values() if r.split == s] for s in ("train", "val", "test")}

    # fine-tuning: system prompt, image, the label as the answer
    for name, split in (("train.jsonl", "train"), ("val.jsonl", "val")):
        lines = files[name]
        assert len(lines) == len(by_split[split])
        for line, row in zip(lines, by_split[split], strict=True):
            system, _, assistant = line["messages"]
            assert system == {"role": "system", "content": system_prompt(LABELS, "full")}
            assert assistant == {"role": "assistant", "content": row.label}
            data, detail = _image_of(line)
            assert data == (small_prepared / row.image_path).read_bytes()
            assert detail == "low"

    # Batch: custom_ids are exactly the test ids, the model after the provider prefix
    batch = files["test-batch.jsonl"]
    assert [b["custom_id"] for b in batch] == [r.id for r in by_split["test"]]
    for line in batch:
        assert line["url"] == "/v1/chat/completions" and line["method"] == "POST"
        assert line["body"]["model"] == "gpt-4o-2024-08-06"
        assert (
            line["body"]["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"]
            == LABELS
        )
        data, _ = _image_of(line)
        assert data == (small_prepared / rows[line["custom_id"]].image_path).read_bytes()

    # the result and export.json agree with the files
    counts = {f.path.name: (f.lines, f.bytes) for f in result.files}
    for f in result.files:
        assert f.path.parent == small_prepared / "jsonl"
        assert f.bytes == f.path.stat().st_size
    summary = json.loads(result.summary_path.read_text())
    assert {f["name"]: (f["lines"], f["bytes"]) for f in summary["files"]} == counts
    assert summary["model"] == "gpt-4o-2024-08-06" and summary["provider"] == "openai"
    assert summary["options"]["detail"] == "low"
    assert "key" not in json.dumps(summary).lower()
    assert not (small_prepared / "jsonl" / ".export-tmp").exists()


def test_export_lines_are_compact_jsonl(small_prepared: Path) -> None:
    export(small_prepared, ExportOptions(model=MODEL))
    for path in (small_prepared / "jsonl").glob("*.jsonl"):
        for text in path.read_text(encoding="utf-8").splitlines():
            assert text + "\n" == w.dumps_line(json.loads(text))


def test_export_detail_prompt_and_text_answer(small_prepared: Path) -> None:
    export(small_prepared, ExportOptions(model=MODEL, prompt="short", detail="high", answer="text"))
    files = _check_all(small_prepared)
    for lines in files.values():
        for line in lines:
            messages = line["body"]["messages"] if "body" in line else line["messages"]
            assert messages[0]["content"] == system_prompt(LABELS, "short")
            assert not any(label in messages[0]["content"] for label in LABELS)
            assert _image_of(line)[1] == "high"
    for line in files["test-batch.jsonl"]:
        assert "response_format" not in line["body"]
        assert line["body"]["max_completion_tokens"] == w.DEFAULT_MAX_TOKENS["text"]


def test_export_training_prompt_differs_from_batch_prompt(small_prepared: Path) -> None:
    export(small_prepared, ExportOptions(model=MODEL, prompt="full", training_prompt="short"))
    files = _check_all(small_prepared)
    assert files["train.jsonl"][0]["messages"][0]["content"] == system_prompt(LABELS, "short")
    assert files["test-batch.jsonl"][0]["body"]["messages"][0]["content"] == system_prompt(
        LABELS, "full"
    )


def test_export_azure(small_prepared: Path) -> None:
    export(small_prepared, ExportOptions(model="azure/my-gpt4o-deployment"))
    files = _check_all(small_prepared, model="my-gpt4o-deployment")
    for line in files["test-batch.jsonl"]:
        assert line["url"] == "/chat/completions"
        assert line["body"]["model"] == "my-gpt4o-deployment"


def _test_ids(prepared: Path) -> list[str]:
    return [r.id for r in read_manifest(prepared) if r.split == "test"]


def test_batch_split_by_line_count(small_prepared: Path) -> None:
    result = export(small_prepared, ExportOptions(model=MODEL), ExportLimits(max_batch_lines=4))
    files = _check_all(small_prepared)
    names = sorted(n for n in files if n.startswith("test-batch"))
    assert names == ["test-batch-001.jsonl", "test-batch-002.jsonl"]
    assert [len(files[n]) for n in names] == [4, 2]
    assert [line["custom_id"] for n in names for line in files[n]] == _test_ids(small_prepared)
    assert any("2 Batch input files" in warning for warning in result.warnings)


def test_batch_split_by_bytes(small_prepared: Path) -> None:
    one = export(small_prepared, ExportOptions(model=MODEL))
    (batch,) = [f for f in one.files if f.kind == "test-batch"]
    biggest_line = max(
        len(t.encode()) + 1 for t in batch.path.read_text(encoding="utf-8").splitlines()
    )
    limit = 2 * biggest_line  # at most two lines a file
    result = export(small_prepared, ExportOptions(model=MODEL), ExportLimits(max_batch_bytes=limit))
    files = _check_all(small_prepared)
    names = sorted(n for n in files if n.startswith("test-batch"))
    assert len(names) >= 3 and "test-batch.jsonl" not in names  # the earlier single file is gone
    assert names[0] == "test-batch-001.jsonl"
    assert [line["custom_id"] for n in names for line in files[n]] == _test_ids(small_prepared)
    for f in result.files:
        assert f.bytes == f.path.stat().st_size
        if f.kind == "test-batch":
            assert f.bytes <= limit

    # a single line over the limit cannot be split
    with pytest.raises(UserError, match="over the"):
        export(
            small_prepared,
            ExportOptions(model=MODEL),
            ExportLimits(max_batch_bytes=biggest_line - 1),
        )


def test_too_few_training_examples(tmp_path: Path) -> None:
    prepared = make_prepared_dir(tmp_path / "p", ["A", "B", "C"], {"train": 3, "val": 1, "test": 1})
    with pytest.raises(UserError, match="9 training images: fine-tuning needs at least 10"):
        export(prepared, ExportOptions(model=MODEL))
    assert not (prepared / "jsonl" / "train.jsonl").exists()


def test_too_many_training_examples(small_prepared: Path) -> None:
    with pytest.raises(UserError, match="at most 20"):
        export(small_prepared, ExportOptions(model=MODEL), ExportLimits(max_ft_examples=20))


def test_large_finetune_file_warns(small_prepared: Path) -> None:
    result = export(
        small_prepared, ExportOptions(model=MODEL), ExportLimits(max_ft_file_bytes=1000)
    )
    assert any("train.jsonl" in warning and "Uploads API" in warning for warning in result.warnings)
    with pytest.raises(UserError, match="upload limit"):
        export(small_prepared, ExportOptions(model=MODEL), ExportLimits(max_upload_bytes=1000))


def test_empty_val_writes_no_val_file(tmp_path: Path) -> None:
    prepared = make_prepared_dir(tmp_path / "p", ["A", "B"], {"train": 5, "test": 1})
    result = export(prepared, ExportOptions(model=MODEL))
    files = _check_all(prepared)
    assert sorted(files) == ["test-batch.jsonl", "train.jsonl"]
    assert any("no val images" in warning for warning in result.warnings)


def test_oversize_image_names_the_file(small_prepared: Path) -> None:
    row = read_manifest(small_prepared)[0]
    size = (small_prepared / row.image_path).stat().st_size
    with pytest.raises(UserError, match=row.image_path.split("/")[-1]) as e:
        export(small_prepared, ExportOptions(model=MODEL), ExportLimits(max_image_bytes=size - 1))
    assert "image limit" in str(e.value)
    assert not (small_prepared / "jsonl").exists()


def test_not_an_image_names_the_file(small_prepared: Path) -> None:
    row = next(r for r in read_manifest(small_prepared) if r.split == "test")
    (small_prepared / row.image_path).write_bytes(b"GIF89a" + b"\0" * 100)
    with pytest.raises(UserError, match="not a JPEG, PNG or WEBP") as e:
        export(small_prepared, ExportOptions(model=MODEL))
    assert row.image_path in str(e.value).replace("\\", "/")


def test_grayscale_training_image_is_refused(small_prepared: Path) -> None:
    row = next(r for r in read_manifest(small_prepared) if r.split == "train")
    Image.new("L", (8, 8), 128).save(small_prepared / row.image_path, "JPEG")
    with pytest.raises(UserError, match="RGB or RGBA"):
        export(small_prepared, ExportOptions(model=MODEL))


def test_png_and_webp_are_sent_with_their_type(small_prepared: Path) -> None:
    rows = read_manifest(small_prepared)
    for i, fmt in enumerate(["PNG", "WEBP"]):
        path = small_prepared / rows[i].image_path
        Image.new("RGB", (16, 16), (1, 2, 3)).save(path, fmt)
        data = path.read_bytes()
        rows[i] = rows[i].model_copy(
            update={"image_sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        )
    write_manifest(small_prepared / MANIFEST_NAME, rows)
    export(small_prepared, ExportOptions(model=MODEL))
    train = _check_all(small_prepared)["train.jsonl"]
    urls = [line["messages"][1]["content"][0]["image_url"]["url"] for line in train[:2]]
    assert urls[0].startswith("data:image/png;base64,") and urls[1].startswith(
        "data:image/webp;base64,"
    )
    assert (
        base64.b64decode(urls[0].split(",", 1)[1])
        == (small_prepared / rows[0].image_path).read_bytes()
    )


def test_changed_image_fails_and_keeps_the_earlier_export(small_prepared: Path) -> None:
    export(small_prepared, ExportOptions(model=MODEL))
    before = {p.name: p.read_bytes() for p in (small_prepared / "jsonl").iterdir()}
    row = [r for r in read_manifest(small_prepared) if r.split == "test"][-1]
    make_jpeg(small_prepared / row.image_path, size=(64, 48), seed=999)
    with pytest.raises(DataError, match="changed since"):
        export(small_prepared, ExportOptions(model=MODEL, detail="high"))
    after = {p.name: p.read_bytes() for p in (small_prepared / "jsonl").iterdir()}
    assert after == before


@pytest.mark.parametrize("model", ["gpt-4o", "clip/ViT-B-32", "openai/", "", "anthropic/claude"])
def test_bad_model_string(small_prepared: Path, model: str) -> None:
    with pytest.raises(UserError, match=r"PROVIDER/MODEL|openai/gpt-4o"):
        export(small_prepared, ExportOptions(model=model))


def test_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no manifest\.csv"):
        export(tmp_path / "empty", ExportOptions(model=MODEL))


def test_export_is_reproducible(small_prepared: Path) -> None:
    export(small_prepared, ExportOptions(model=MODEL))
    first = {p.name: p.read_bytes() for p in (small_prepared / "jsonl").iterdir()}
    export(small_prepared, ExportOptions(model=MODEL))
    assert {p.name: p.read_bytes() for p in (small_prepared / "jsonl").iterdir()} == first


# --- CLI -----------------------------------------------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_export(small_prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        ["export", str(small_prepared), "--model", MODEL, "--detail", "high"], capsys
    )
    assert code == 0, err
    for name in ("train.jsonl", "val.jsonl", "test-batch.jsonl"):
        assert name in out
    files = _check_all(small_prepared)
    assert _image_of(files["train.jsonl"][0])[1] == "high"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "gpt-4o"], "PROVIDER/MODEL"),
        (["--model", MODEL, "--detail", "medium"], "medium"),
    ],
)
def test_cli_errors_are_one_line(
    small_prepared: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, _, err = _run(["export", str(small_prepared), *argv], capsys)
    assert code != 0
    assert needle in err
    assert "Traceback" not in err


def test_cli_missing_manifest_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["export", str(tmp_path), "--model", MODEL], capsys)
    assert code == 1
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "manifest.csv" in err


def test_zero_shot_only_sample_exports_just_the_batch_file(tmp_path: Path) -> None:
    from conftest import make_prepared_dir

    d = make_prepared_dir(tmp_path / "zs", ["A", "B"], {"test": 3})
    result = export(d, ExportOptions(model="openai/gpt-4o-2024-08-06"))
    assert [f.kind for f in result.files] == ["test-batch"]
    assert any("no train images" in w for w in result.warnings)
    assert not (d / "jsonl" / "train.jsonl").exists()
