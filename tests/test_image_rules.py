"""The two image-token rules (tile, patch) against the sources' worked examples and measured
billing; the shipped models' rules; `estimate` and the emulator counting by the same rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_classify.backends.openai.tokens import image_tokens
from vlm_classify.backends.openai.wire import chat_body, classification_messages, image_data_url
from vlm_classify.dataset.manifest import read_labels, read_manifest
from vlm_classify.emulator import EmulatorConfig
from vlm_classify.emulator.chat import ModelRoute, billed, complete
from vlm_classify.emulator.oracle import GroundTruth, Oracle
from vlm_classify.estimate import EstimateOptions, estimate
from vlm_classify.image_rules import (
    PatchRule,
    PatchSizing,
    TileRule,
    describe,
    multiplied,
    patch_grid,
    patch_tokens,
    tile_tokens,
)
from vlm_classify.pricing import load_pricing, lookup
from vlm_classify.prompts import system_prompt

GUIDE = "https://developers.openai.com/api/docs/guides/images-vision#calculating-costs"
GUIDE_2025 = PatchSizing(max_patches=1536)
"""The 2025 guide's patch sizing ("GPT-4.1-mini, GPT-4.1-nano, o4-mini"): 1,536 patches."""


# --- the patch rule ----------------------------------------------------------------------------


def test_patch_rule_worked_examples_2025_guide() -> None:
    """Source: GUIDE, the 2025 version ("Cost calculation examples", before the multiplier):
    "A 1024 x 1024 image is 1024 tokens" and "A 1800 x 2400 image is 1452 tokens": shrink
    sqrt(1536 x 32^2 / (1800 x 2400)) = 0.603, then by 33 / 33.94 so the width fits 33 patches:
    1056 x 1408, 33 x 44 = 1452."""
    assert patch_grid(1024, 1024, GUIDE_2025) == (1024, 1024, 1024)
    assert patch_grid(1800, 2400, GUIDE_2025) == (1056, 1408, 1452)
    assert patch_grid(2400, 1800, GUIDE_2025) == (1408, 1056, 1452)
    rule = PatchRule(multiplier=1.0, high=GUIDE_2025)
    assert patch_tokens(1800, 2400, "high", rule) == 1452
    # Step D, "apply a multiplier": x1.62 (gpt-4.1-mini), rounded up.
    assert multiplied(1452, 1.62) == 2353  # 2352.24


def test_patch_rule_worked_examples_current_guide() -> None:
    """Source: GUIDE, current version, "Cost calculation examples for gpt-5.4 with detail: high"
    (2048 px, 2,500 patches, x1.2): 1024 x 1024 is ceil(1024 x 1.2) = 1229; 2048 x 2048 needs
    4096 patches, the budget reduces it to 1600 x 1600 = 2500 patches, ceil(2500 x 1.2) = 3000."""
    assert image_tokens(1024, 1024, "high", "openai/gpt-5.4") == 1229
    assert image_tokens(2048, 2048, "high", "openai/gpt-5.4") == 3000
    rule = lookup("openai/gpt-5.4").vision
    assert isinstance(rule, PatchRule)
    assert patch_grid(2048, 2048, rule.high) == (1600, 1600, 2500)


def test_patch_rule_pixel_limit_and_budget_never_exceeded() -> None:
    sizing = PatchSizing(max_px=2048, max_patches=1536)
    assert patch_grid(4000, 1474, sizing) == (2048, 755, 1536)  # fit 2048 px first
    assert patch_grid(100, 50, sizing) == (100, 50, 8)  # small images are not enlarged
    for w, h in [(4000, 3000), (5000, 300), (333, 7777), (2049, 2049), (32 * 60, 32 * 27)]:
        for budget in (256, 1536, 2500, 6144):
            _, _, patches = patch_grid(w, h, PatchSizing(max_px=2048, max_patches=budget))
            assert 0 < patches <= budget


def test_gpt41_mini_rule_matches_measured_billing() -> None:
    """Billing users measured for gpt-4.1-mini in 2025, 9 text tokens on top each time:
    4000 x 1474 billed 2498 and 2400 x 1800 billed 2362 (https://community.openai.com/t/
    vision-pricing-calculator-inaccurate-resizing-rounding-vs-api-costs/1281361, https://
    community.openai.com/t/gpt-4-1-vision-price-calculations-incorrect-billing-on-full-model/
    1230130). The shipped rule (2048 px, then 1,536 patches, x1.62) gives both."""
    assert image_tokens(4000, 1474, "high", "openai/gpt-4.1-mini") == 2498 - 9
    assert image_tokens(2400, 1800, "high", "openai/gpt-4.1-mini") == 2362 - 9
    # Neither guide alone does: the 2025 one (no pixel limit) and the current one (6,144).
    assert multiplied(patch_grid(4000, 1474, GUIDE_2025)[2], 1.62) == 2348
    current = PatchSizing(max_px=2048, max_patches=6144)
    assert multiplied(patch_grid(2400, 1800, current)[2], 1.62) == 4977


@pytest.mark.parametrize(
    ("size", "billed_tokens"),
    [
        ((256, 256), 77),
        ((512, 512), 308),
        ((768, 1024), 922),
        ((1280, 720), 1104),
        ((1024, 1024), 1229),
        ((2048, 768), 1844),
    ],
)
def test_gpt5_mini_rule_matches_measured_billing(size: tuple[int, int], billed_tokens: int) -> None:
    """gpt-5-mini image tokens measured off the API (https://community.openai.com/t/
    gpt-5-mini-image-input-token-calculation-discrepancy-with-official-faq-formula/1344040):
    ceil(patches x 1.2), not the 2025 guide's 1.62; 920 x 1.2 is 1104, not 1105 (float noise)."""
    assert image_tokens(*size, "high", "openai/gpt-5-mini") == billed_tokens
    assert image_tokens(*size, "low", "openai/gpt-5-mini") == billed_tokens  # low changes nothing


def test_detail_per_patch_model() -> None:
    """What `detail` does differs per model (GUIDE, current version, "Model sizing behavior")."""
    # gpt-4.1-mini, gpt-5.2: every detail is sized the same; detail: low is not 85 tokens.
    for model in ("openai/gpt-4.1-mini", "openai/gpt-5.2"):
        assert image_tokens(500, 375, "low", model) == image_tokens(500, 375, "high", model)
        assert image_tokens(500, 375, "low", model) != 85
    # gpt-5.4: low allows 6,144 patches, high 2,500: low can cost more.
    assert image_tokens(2048, 2048, "low", "openai/gpt-5.4") == 4916  # 4096 x 1.2
    assert image_tokens(2048, 2048, "auto", "openai/gpt-5.4") == 3000  # auto = high
    # gpt-5.5: low fits 512 px (256 patches at most); auto is sized as original (10,000).
    assert image_tokens(4000, 3000, "low", "openai/gpt-5.5") == multiplied(16 * 12, 1.2)
    assert image_tokens(2048, 2048, "auto", "openai/gpt-5.5") == 4916
    assert image_tokens(2048, 2048, "high", "openai/gpt-5.5") == 3000


def test_patch_rule_errors() -> None:
    rule = PatchRule(multiplier=1.2, high=GUIDE_2025)
    with pytest.raises(ValueError, match="detail"):
        patch_tokens(500, 375, "original", rule)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        patch_tokens(0, 375, "low", rule)
    with pytest.raises(ValueError):
        PatchRule(multiplier=0, high=GUIDE_2025)


# --- the tile rule -----------------------------------------------------------------------------


def test_tile_rule_worked_examples() -> None:
    """Source: GUIDE, "Cost calculation examples (for gpt-4o)": 1024 x 1024 high is 765; 2048 x
    4096 high is 1105; a 4096 x 8192 low image 85. The same steps with gpt-5's 70 + 140 per tile
    (the guide's table: "gpt-5, gpt-5-chat-latest | 70 | 140")."""
    gpt4o = TileRule()
    assert tile_tokens(1024, 1024, "high", gpt4o) == 765
    assert tile_tokens(2048, 4096, "high", gpt4o) == 1105
    assert tile_tokens(4096, 8192, "low", gpt4o) == 85
    for model in ("openai/gpt-5", "openai/gpt-5.1"):
        assert image_tokens(1024, 1024, "high", model) == 70 + 4 * 140
        assert image_tokens(2048, 4096, "auto", model) == 70 + 6 * 140
        assert image_tokens(4096, 8192, "low", model) == 70
    # gpt-4.1 bills tiles (measured: 1800 x 2400 and 1024 x 1024 both 765 image tokens).
    assert image_tokens(1800, 2400, "high", "openai/gpt-4.1") == 765
    assert image_tokens(1024, 1024, "high", "openai/gpt-4.1") == 765


# --- the shipped table -------------------------------------------------------------------------


def test_todays_models_are_priced_with_a_rule_and_sources() -> None:
    table = load_pricing()
    keys = {e.key for e in table.entries}
    assert {
        "openai/gpt-4.1",
        "openai/gpt-4.1-mini",
        "openai/gpt-4.1-nano",
        "openai/gpt-5",
        "openai/gpt-5-mini",
        "openai/gpt-5-nano",
        "openai/gpt-5.4",
        "azure/gpt-4.1",
        "azure/gpt-4.1-mini",
        "azure/gpt-4.1-nano",
    } <= keys
    for entry in table.entries:
        assert entry.source and entry.date
        assert entry.vision.source.startswith("https://"), entry.key
        if entry.finetune_images is not None:
            assert entry.finetune_source.startswith("https://"), entry.key
    kinds = {k: lookup(k).vision.kind for k in keys}
    assert kinds["openai/gpt-4.1"] == kinds["openai/gpt-5"] == "tile"
    assert kinds["openai/gpt-4.1-mini"] == kinds["openai/gpt-5-mini"] == "patch"


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("openai/gpt-4.1-2025-04-14", "openai/gpt-4.1"),
        ("openai/ft:gpt-4.1-2025-04-14:org:dogs:AbC123", "openai/gpt-4.1"),
        ("openai/gpt-4.1-mini", "openai/gpt-4.1-mini"),
        ("openai/gpt-4.1-mini-2025-04-14", "openai/gpt-4.1-mini"),
        ("openai/gpt-5-2025-08-07", "openai/gpt-5"),
        ("openai/gpt-5-mini-2025-08-07", "openai/gpt-5-mini"),
        ("openai/gpt-5.4-mini-2026-03-17", "openai/gpt-5.4-mini"),
        ("openai/gpt-5.4", "openai/gpt-5.4"),
        ("azure/gpt-4.1", "azure/gpt-4.1"),
        ("azure/gpt-4.1-ft", "azure/gpt-4.1"),
        ("azure/gpt-4.1-mini", "azure/gpt-4.1-mini"),
    ],
)
def test_todays_models_lookup(model: str, key: str) -> None:
    assert lookup(model).key == key


def test_prices_and_finetuning_of_todays_models() -> None:
    gpt41 = lookup("openai/gpt-4.1")
    assert (gpt41.input_per_1m, gpt41.output_per_1m) == (2.0, 8.0)
    assert (gpt41.batch_input_per_1m, gpt41.batch_output_per_1m) == (1.0, 4.0)
    assert (gpt41.training_per_1m, gpt41.finetuned_input_per_1m) == (25.0, 3.0)
    # OpenAI fine-tunes only gpt-4o-2024-08-06 on images; Azure also gpt-4.1.
    assert lookup("openai/gpt-4o-2024-08-06").finetune_images is True
    assert gpt41.finetune_images is False
    assert lookup("openai/gpt-4o-mini").finetune_images is False
    az = lookup("azure/gpt-4.1")
    assert az.finetune_images is True and az.hosting_per_hour == 1.7
    assert az.training_per_1m is None  # no source in reach: left out, never guessed
    assert lookup("azure/gpt-4.1-mini").finetune_images is False
    assert lookup("openai/gpt-5-nano").vision.multiplier == 1.5  # type: ignore[union-attr]


def test_azure_models_count_images_as_openai_does() -> None:
    """The emulator looks rules up under `openai/<model>`: an Azure twin must have the same rule."""
    for entry in load_pricing().entries:
        provider, _, name = entry.key.partition("/")
        if provider == "azure" and name in {"gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"}:
            assert entry.vision == lookup(f"openai/{name}").vision


def test_disputed_rules_say_what_was_taken() -> None:
    for key in ("openai/gpt-4.1", "openai/gpt-4.1-mini", "openai/gpt-5-mini", "openai/gpt-5-nano"):
        disputes = lookup(key).vision.disagreements
        assert disputes and all("taken" in d and "https://" in d for d in disputes), key


def test_override_a_patch_rule(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"models": {"openai/gpt-5-mini": {"vision": {"multiplier": 1.62}}}}))
    rule = lookup("openai/gpt-5-mini", f).vision
    assert isinstance(rule, PatchRule) and rule.multiplier == 1.62
    assert rule.high.max_patches == 1536  # the rest of the shipped rule stays
    # A rule of the other kind replaces the shipped one whole.
    f.write_text(json.dumps({"models": {"openai/gpt-5-mini": {"vision": {"kind": "tile"}}}}))
    assert lookup("openai/gpt-5-mini", f).vision == TileRule()
    f.write_text(
        json.dumps({"models": {"openai/gpt-4.1": {"vision": {"kind": "patch", "multiplier": 1}}}})
    )
    with pytest.raises(Exception, match=r"vision.*high"):
        lookup("openai/gpt-4.1", f)


def test_describe_names_the_rule() -> None:
    mini = lookup("openai/gpt-4.1-mini").vision
    assert "patch rule" in describe(mini, "low") and "x 1.62" in describe(mini, "low")
    assert "sized as high" in describe(mini, "low")
    assert "fixed 85 tokens" in describe(TileRule(), "low")


# --- estimate and emulator ---------------------------------------------------------------------


def test_estimate_counts_a_patch_model_by_its_rule(small_prepared: Path) -> None:
    """64 x 48 test images: 2 x 2 patches x 1.2 = 5 tokens each with gpt-5-mini, at any detail,
    where the tile rule would count 85 (low) or 255 (high)."""
    low = estimate(small_prepared, EstimateOptions(model="openai/gpt-5-mini"))
    high = estimate(small_prepared, EstimateOptions(model="openai/gpt-5-mini", detail="high"))
    assert low.realtime.input_tokens == high.realtime.input_tokens
    tile = estimate(small_prepared, EstimateOptions(model="openai/gpt-4.1"))
    n = low.splits["test"]
    # Same text and schema tokens; the images differ: 5 each vs 85 each.
    assert tile.realtime.input_tokens - low.realtime.input_tokens == n * (85 - 5)
    notes = "\n".join(low.assumptions)
    assert "patch rule" in notes and "x 1.2" in notes
    assert "sources disagree" in notes and "1.62" in notes
    # gpt-5-mini cannot be fine-tuned at all; the notes say so instead of pricing a job.
    assert low.training is None and low.finetuned is None and low.hosting.usd_per_hour == 0
    assert "cannot be fine-tuned on images at OpenAI" in notes


def test_estimate_says_no_price_where_the_table_has_none(small_prepared: Path) -> None:
    est = estimate(small_prepared, EstimateOptions(model="azure/gpt-4.1"))
    notes = "\n".join(est.assumptions)
    assert est.training is None and "no training price for azure/gpt-4.1" in notes
    assert est.finetuned is not None and est.hosting.usd_per_hour == 1.7
    assert "tile rule" in notes


def _route(model: str) -> ModelRoute:
    return ModelRoute(model, model, model, False, "base", 0.9)


@pytest.mark.parametrize("model", ["gpt-5-mini-2025-08-07", "gpt-4.1-2025-04-14", "gpt-5.4"])
@pytest.mark.parametrize("detail", ["low", "high"])
def test_emulator_bills_what_estimate_counts(small_prepared: Path, model: str, detail) -> None:
    """Each test image's request, as `classify` builds it, billed by the emulator: the sum is
    the estimate's realtime input tokens for the same model and detail."""
    rows = [r for r in read_manifest(small_prepared) if r.split == "test"]
    labels = read_labels(small_prepared)
    oracle = Oracle(GroundTruth.load([small_prepared]))
    system = system_prompt(labels, "full")
    total = 0
    for i, row in enumerate(rows):
        url = image_data_url((small_prepared / row.image_path).read_bytes())
        body = chat_body(model, classification_messages(system, url, detail), labels=labels)
        result = complete(body, _route(model), oracle, completion_id=f"c{i}", created=0)
        total += result.body["usage"]["prompt_tokens"]
    est = estimate(small_prepared, EstimateOptions(model=f"openai/{model}", detail=detail))
    assert total == est.realtime.input_tokens


def test_emulator_bill_factor(small_prepared: Path) -> None:
    row = next(r for r in read_manifest(small_prepared) if r.split == "test")
    labels = read_labels(small_prepared)
    url = image_data_url((small_prepared / row.image_path).read_bytes())
    body = chat_body("gpt-5-mini", classification_messages("Classify.", url), labels=labels)
    oracle = Oracle(GroundTruth.load([small_prepared]))
    usage = [
        complete(
            body, _route("gpt-5-mini"), oracle, completion_id="c", created=0, bill_factor=f
        ).body["usage"]
        for f in (1.0, 1.2)
    ]
    assert usage[1]["prompt_tokens"] == billed(usage[0]["prompt_tokens"], 1.2)
    assert usage[0]["prompt_tokens"] * 1.2 <= usage[1]["prompt_tokens"]
    assert usage[1]["prompt_tokens"] < usage[0]["prompt_tokens"] * 1.2 + 1
    assert usage[1]["total_tokens"] == usage[1]["prompt_tokens"] + usage[1]["completion_tokens"]
    assert billed(100, 1.0) == 100 and billed(100, 1.2) == 120 and billed(101, 1.2) == 122
    assert (
        EmulatorConfig().bill_factor == 1.0 and EmulatorConfig(bill_factor=1.2).bill_factor == 1.2
    )
    with pytest.raises(ValueError):
        EmulatorConfig(bill_factor=0)
