"""The price table: shipped entries, lookups, user overrides, the cost function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_classify.errors import UserError
from vlm_classify.pricing import cost_usd, load_pricing, lookup, training_cost_usd


def test_shipped_entries_have_source_and_date() -> None:
    table = load_pricing()
    keys = {e.key for e in table.entries}
    assert {
        "azure/gpt-4o-2024-08-06",
        "openai/gpt-4o-2024-08-06",
        "openai/gpt-4o-mini-2024-07-18",
    } <= keys
    for entry in table.entries:
        assert entry.source and entry.date


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("azure/gpt-4o-2024-08-06", "azure/gpt-4o-2024-08-06"),
        ("azure/gpt-4o-2024-08-06-ft", "azure/gpt-4o-2024-08-06"),
        ("openai/gpt-4o-2024-08-06", "openai/gpt-4o-2024-08-06"),
        ("openai/ft:gpt-4o-2024-08-06:my-org::AbC123", "openai/gpt-4o-2024-08-06"),
        ("openai/gpt-4o-mini", "openai/gpt-4o-mini-2024-07-18"),
        ("openai/ft:gpt-4o-mini-2024-07-18:my-org:dogs:XyZ", "openai/gpt-4o-mini-2024-07-18"),
    ],
)
def test_lookup_patterns(model: str, key: str) -> None:
    assert lookup(model).key == key


def test_study_prices() -> None:
    azure = lookup("azure/gpt-4o-2024-08-06")
    assert (azure.training_per_1m, azure.hosting_per_hour) == (27.5, 1.7)
    assert (azure.input_per_1m, azure.output_per_1m) == (2.5, 10.0)
    assert (azure.batch_input_per_1m, azure.batch_output_per_1m) == (1.25, 5.0)
    openai = lookup("openai/gpt-4o-2024-08-06")
    assert (openai.training_per_1m, openai.hosting_per_hour) == (25.0, 0.0)
    assert (openai.finetuned_input_per_1m, openai.finetuned_output_per_1m) == (3.75, 15.0)


def test_unknown_and_bad_model() -> None:
    with pytest.raises(
        UserError, match=r"no price for openai/gpt-9: pass --pricing FILE .*docs/pricing.md"
    ):
        lookup("openai/gpt-9")
    for bad in ("gpt-4o", "/gpt-4o", "openai/", "openai/gpt 4o"):
        with pytest.raises(UserError, match="PROVIDER/MODEL"):
            lookup(bad)


def test_cost_arithmetic() -> None:
    entry = lookup("openai/gpt-4o-2024-08-06")
    # 1M in x $2.50 + 100k out x $10/1M = 2.50 + 1.00
    assert cost_usd(1_000_000, 100_000, entry, "realtime") == pytest.approx(3.50)
    # Batch: half of that
    assert cost_usd(1_000_000, 100_000, entry, "batch") == pytest.approx(1.75)
    # fine-tuned: 1M x $3.75 + 100k x $15/1M = 3.75 + 1.50
    assert cost_usd(1_000_000, 100_000, entry, "finetuned") == pytest.approx(5.25)
    assert cost_usd(0, 0, entry, "batch") == 0
    # the study: 5.616M training tokens x $27.5/1M = $154.44
    assert training_cost_usd(5_616_000, lookup("azure/gpt-4o-2024-08-06")) == pytest.approx(154.44)
    with pytest.raises(ValueError):
        cost_usd(1, 1, entry, "spot")  # type: ignore[arg-type]


def _write(path: Path, models: dict) -> Path:
    path.write_text(json.dumps({"models": models}), encoding="utf-8")
    return path


def test_override_changes_named_fields_only(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "prices.json",
        {
            "azure/gpt-4o-2024-08-06": {
                "hosting_per_hour": 2.0,
                "source": "my quote",
                "date": "2026-01",
                "vision": {"low_tokens": 90},
            }
        },
    )
    entry = lookup("azure/gpt-4o-2024-08-06-ft", f)
    assert (entry.hosting_per_hour, entry.source, entry.date) == (2.0, "my quote", "2026-01")
    assert entry.training_per_1m == 27.5  # kept from the shipped entry
    assert (entry.vision.low_tokens, entry.vision.tile_tokens) == (90, 170)
    # other shipped entries stay
    assert lookup("openai/gpt-4o-2024-08-06", f).training_per_1m == 25.0


def test_override_adds_entries_matched_first(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "prices.json",
        {
            "azure/dogs": {
                "match": ["azure/dogs-*"],
                "source": "quote",
                "date": "2026-02",
                "input_per_1m": 1,
                "output_per_1m": 4,
            },
            "openai/everything": {
                "match": ["openai/*"],
                "source": "flat",
                "date": "2026-02",
                "input_per_1m": 9,
                "output_per_1m": 9,
            },
        },
    )
    table = load_pricing(f)
    dogs = table.lookup("azure/dogs-eastus2")
    assert (
        dogs.key == "azure/dogs" and dogs.training_per_1m is None and dogs.vision.low_tokens == 85
    )
    assert table.lookup("openai/gpt-4o-2024-08-06").key == "openai/everything"
    assert table.lookup("azure/gpt-4o-2024-08-06").key == "azure/gpt-4o-2024-08-06"
    with pytest.raises(UserError, match="no batch price"):
        cost_usd(1, 1, dogs, "batch")
    with pytest.raises(UserError, match="no training price"):
        training_cost_usd(1, dogs)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", 'no "models" object'),
        (json.dumps({"models": {"x/y": 3}}), "not an object"),
        (
            json.dumps(
                {
                    "models": {
                        "x/y": {"source": "s", "date": "d", "input_per_1m": -1, "output_per_1m": 1}
                    }
                }
            ),
            "input_per_1m",
        ),
        (
            json.dumps(
                {
                    "models": {
                        "x/y": {
                            "source": "s",
                            "date": "d",
                            "input_per_1m": 1,
                            "output_per_1m": 1,
                            "typo": 1,
                        }
                    }
                }
            ),
            "typo",
        ),
        (json.dumps({"models": {"x/y": {"input_per_1m": 1, "output_per_1m": 1}}}), "source"),
    ],
)
def test_bad_pricing_files(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "prices.json"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as info:
        load_pricing(f)
    assert "\n" not in str(info.value)


def test_missing_pricing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_pricing(tmp_path / "nope.json")


def test_yaml_pricing_file(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    f = tmp_path / "prices.yaml"
    f.write_text(
        "models:\n  azure/gpt-4o-2024-08-06:\n    hosting_per_hour: 3.0\n", encoding="utf-8"
    )
    assert lookup("azure/gpt-4o-2024-08-06", f).hosting_per_hour == 3.0
