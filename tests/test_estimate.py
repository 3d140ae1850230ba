"""`estimate` and `vlm-classify estimate`: the study's numbers, line items, CLI output and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_classify.backends.openai.tokens import count_text, image_tokens
from vlm_classify.cli import main
from vlm_classify.dataset.manifest import LABELS_NAME, MANIFEST_NAME, ManifestRow, write_manifest
from vlm_classify.estimate import EstimateOptions, estimate
from vlm_classify.prompts import label_from_folder

DATA = Path(__file__).parent / "data"


def _study_dir(root: Path, size: tuple[int, int] = (500, 375)) -> Path:
    """The study's dataset shape without images: 120 breeds, 40/5/5 each, every image `size`."""
    root.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    labels: list[str] = []
    for folder in (DATA / "stanford_dogs_folders.txt").read_text(encoding="utf-8").split():
        synset, label = label_from_folder(folder)
        labels.append(label)
        for split, count in (("train", 40), ("val", 5), ("test", 5)):
            for i in range(count):
                rows.append(
                    ManifestRow(
                        id=f"{synset}/{split}_{i}",
                        split=split,  # type: ignore[arg-type]
                        label=label,
                        synset=synset,
                        source_path=f"{folder}/{split}_{i}.jpg",
                        source_sha256="0" * 64,
                        image_path=f"images/{synset}/{split}_{i}.jpg",
                        image_sha256="0" * 64,
                        width=size[0],
                        height=size[1],
                        bytes=20_000,
                    )
                )
    assert len(labels) == 120
    write_manifest(root / MANIFEST_NAME, rows)
    (root / LABELS_NAME).write_text("".join(f"{lb}\n" for lb in sorted(labels)), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _study_dir(tmp_path_factory.mktemp("study"))


def test_study_training_line(study_dir: Path) -> None:
    """The study's Cost Analysis: 4,800 examples x 2 epochs x 585 tokens = 5.616M, ~$155."""
    est = estimate(study_dir, EstimateOptions(model="azure/gpt-4o-2024-08-06"))
    tr = est.training
    assert tr is not None and (tr.examples, tr.epochs) == (4800, 2)
    assert est.splits == {"train": 4800, "val": 600, "test": 600}
    # The study counts system (494) + image (85) + target (~6) = 585; we also count the message
    # overheads (3 per message + role, +3 priming) and the real label tokens, about 597.
    assert tr.tokens == pytest.approx(5_616_000, rel=0.03)
    assert tr.cost_usd == pytest.approx(155, rel=0.03)
    assert tr.tokens_per_example == pytest.approx(585, rel=0.03)


def test_study_batch_line(study_dir: Path) -> None:
    # With the study's stated settings (detail=low, free-text answers) our Batch figure follows
    # the study's own arithmetic: 600 x (494 + 85) input x $1.25/1M + 600 x ~6 x $5/1M = $0.452.
    low = estimate(study_dir, EstimateOptions(model="azure/gpt-4o-2024-08-06", answer="text"))
    assert low.batch is not None and low.batch.requests == 600
    assert low.batch.input_tokens == pytest.approx(600 * (494 + 85), rel=0.03)
    assert low.batch.cost_usd == pytest.approx(0.452, rel=0.05)
    # The study's *recorded* Batch cost ($0.56 input + $0.03 output = $0.59) is higher: $0.56 at
    # $1.25/1M is ~747 input tokens a request = 494 + 255, i.e. one high-detail tile per image
    # (Stanford Dogs images are mostly <= 512 px), as if the batch ran with the API default
    # detail=auto. Estimating with auto (counted as high) lands near the recorded figure.
    auto = estimate(
        study_dir, EstimateOptions(model="azure/gpt-4o-2024-08-06", detail="auto", answer="text")
    )
    assert auto.batch is not None
    assert auto.batch.cost_usd == pytest.approx(0.59, rel=0.10)
    assert auto.batch.input_tokens * 1.25 / 1e6 == pytest.approx(0.56, rel=0.10)


def test_structured_output_adds_the_schema_tokens(study_dir: Path) -> None:
    from vlm_classify.dataset.manifest import read_labels
    from vlm_classify.estimate import schema_tokens

    text = estimate(study_dir, EstimateOptions(model="azure/gpt-4o-2024-08-06", answer="text"))
    enum = estimate(study_dir, EstimateOptions(model="azure/gpt-4o-2024-08-06", answer="enum"))
    per_request = schema_tokens(read_labels(study_dir))
    assert 500 < per_request < 900  # the enum of 120 breeds as compact JSON
    assert enum.realtime.input_tokens - text.realtime.input_tokens == 600 * per_request
    assert enum.finetuned is not None and text.finetuned is not None
    assert enum.finetuned.input_tokens == text.finetuned.input_tokens  # answers with the label
    assert any("schema adds about" in a for a in enum.assumptions)


def test_study_other_lines(study_dir: Path) -> None:
    est = estimate(study_dir, EstimateOptions(model="azure/gpt-4o-2024-08-06", answer="text"))
    assert est.batch is not None and est.finetuned is not None
    # realtime is twice the Batch price for the same tokens
    assert est.realtime.cost_usd == pytest.approx(2 * est.batch.cost_usd)
    assert est.realtime.input_tokens == est.batch.input_tokens
    # Azure fine-tuned inference is priced like the base model; both answer with the bare label
    assert est.finetuned.input_tokens == est.realtime.input_tokens
    assert est.finetuned.output_tokens == est.realtime.output_tokens
    assert est.hosting.usd_per_hour == 1.7 and est.hosting.usd_per_day == pytest.approx(40.8)
    assert est.price_source.startswith("original study")


def test_short_training_prompt_applies_to_finetuned_inference(study_dir: Path) -> None:
    full = estimate(study_dir, EstimateOptions(model="openai/gpt-4o-2024-08-06"))
    short = estimate(
        study_dir, EstimateOptions(model="openai/gpt-4o-2024-08-06", training_prompt="short")
    )
    assert short.realtime == full.realtime  # the base model keeps the full prompt
    assert short.training is not None and full.training is not None and short.finetuned is not None
    assert short.training.tokens < full.training.tokens / 4
    assert short.finetuned.input_tokens < full.realtime.input_tokens / 4
    assert short.hosting.usd_per_hour == 0


def test_high_detail_uses_each_image_size(tmp_path: Path) -> None:
    d = _study_dir(tmp_path / "big", size=(1024, 1024))
    low = estimate(d, EstimateOptions(model="openai/gpt-4o-2024-08-06"))
    high = estimate(d, EstimateOptions(model="openai/gpt-4o-2024-08-06", detail="high"))
    assert high.realtime.input_tokens - low.realtime.input_tokens == 600 * (765 - 85)
    assert image_tokens(1024, 1024, "high") == 765


def test_small_dataset_items(small_prepared: Path) -> None:
    est = estimate(small_prepared, EstimateOptions(model="openai/gpt-4o-2024-08-06", epochs=3))
    assert est.splits == {"train": 36, "val": 6, "test": 6}
    assert est.training is not None and est.training.epochs == 3
    assert est.realtime.output_tokens == sum(
        2 * count_text(json.dumps({"label": lb}, separators=(",", ":")))
        for lb in ("Beagle", "Chihuahua", "Golden Retriever")
    )
    j = est.to_json()
    assert j["training"]["tokens"] == est.training.tokens
    assert j["training"]["tokens"] % 3 == 0


# --- the command ------------------------------------------------------------------------------


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json(study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        ["estimate", str(study_dir), "--model", "azure/gpt-4o-2024-08-06", "--json"], capsys
    )
    assert code == 0, err
    data = json.loads(out)  # exactly one JSON object and nothing else on stdout
    assert data["model"] == "azure/gpt-4o-2024-08-06"
    assert data["training"]["tokens"] == pytest.approx(5_616_000, rel=0.03)
    assert data["training"]["cost_usd"] == pytest.approx(155, rel=0.03)
    for key in ("batch", "realtime", "finetuned"):
        assert {"requests", "input_tokens", "output_tokens", "cost_usd"} <= set(data[key])
    assert data["batch"]["input_tokens"] > 0 and data["realtime"]["cost_usd"] > 0
    assert data["hosting"]["usd_per_hour"] == 1.7
    assert data["price"]["source"] and data["price"]["date"] == "2025-09"
    assert data["assumptions"]


def test_cli_table(small_prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        [
            "estimate",
            str(small_prepared),
            "--model",
            "openai/gpt-4o-2024-08-06",
            "--detail",
            "auto",
        ],
        capsys,
    )
    assert code == 0, err
    assert "training" in out and "Batch" in out and "hosting" in out
    assert "openai.com/api/pricing" in out and "2025-09" in out


def _one_line_error(args: list[str], capsys: pytest.CaptureFixture[str], expected: str) -> None:
    code, out, err = _run(args, capsys)
    assert code != 0
    assert out == ""
    assert err.strip().count("\n") == 0, err
    assert expected in err


def test_cli_errors(
    small_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(small_prepared)
    _one_line_error(
        [
            "estimate",
            d,
            "--model",
            "openai/gpt-4o-2024-08-06",
            "--pricing",
            str(tmp_path / "nope.json"),
        ],
        capsys,
        "not found",
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{oops", encoding="utf-8")
    _one_line_error(
        ["estimate", d, "--model", "openai/gpt-4o-2024-08-06", "--pricing", str(bad)],
        capsys,
        "not valid JSON",
    )
    _one_line_error(
        ["estimate", str(tmp_path), "--model", "openai/gpt-4o-2024-08-06"],
        capsys,
        "no manifest.csv",
    )
    _one_line_error(["estimate", d, "--model", "gpt-4o"], capsys, "PROVIDER/MODEL")
    _one_line_error(["estimate", d, "--model", "openai/gpt-9"], capsys, "no price for openai/gpt-9")


def test_cli_pricing_override(
    small_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "prices.json"
    f.write_text(
        json.dumps(
            {
                "models": {
                    "azure/my-dogs": {
                        "match": ["azure/my-dogs*"],
                        "source": "quote",
                        "date": "2026-03",
                        "input_per_1m": 1,
                        "output_per_1m": 2,
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    code, out, err = _run(
        [
            "estimate",
            str(small_prepared),
            "--model",
            "azure/my-dogs-ft",
            "--pricing",
            str(f),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["price"] == {"key": "azure/my-dogs", "source": "quote", "date": "2026-03"}
    assert data["batch"] is None and data["training"] is None and data["finetuned"] is None
    assert data["realtime"]["cost_usd"] > 0
