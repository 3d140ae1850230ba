"""`report`: every number in metrics.json recomputed independently from results.csv, the cost
arithmetic by hand, refusals, one-line CLI errors, and the HTML opened in a real browser."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from browser import find_chromium, open_page
from cli_support import run_cli
from conftest import make_prepared_dir
from report_support import (
    BASE_MODEL,
    FT_MODEL,
    ft_extra,
    write_arm,
    write_finetune_job,
    wrong,
)
from vlm_classify.errors import UserError
from vlm_classify.pricing import lookup
from vlm_classify.report import ReportOptions, build_report

LABELS = ["Beagle", "Chihuahua", "Golden Retriever", "Pug"]
TRAINED = 1_200_000


@pytest.fixture
def two_arms(tmp_path: Path) -> Path:
    """Zero-shot (Batch, 1 in 11 invalid, 1 in 4 wrong) and an emulated fine-tune (1 in 6
    wrong, one failed request) on 4 classes x 7 test images."""
    root = make_prepared_dir(tmp_path / "p", LABELS, {"train": 1, "test": 7}, size=(40, 30))

    def base(i: int, label: str, labels: list[str]) -> str | None:
        return None if i % 11 == 0 else wrong(label, labels) if i % 4 == 0 else label

    write_arm(root, "zero-shot", base, mode="batch", prompt_tokens=600, completion_tokens=6)
    write_finetune_job(root, "ft-job", TRAINED)
    write_arm(
        root,
        "fine-tuned",
        lambda i, label, labels: wrong(label, labels, 2) if i % 6 == 0 else label,
        model=FT_MODEL,
        emulated=True,
        error=lambda i: i == 5,
        prompt_tokens=150,
        completion_tokens=5,
        extra=ft_extra("ft-job", TRAINED),
    )
    return root


def _results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _binom_two_sided(k: int, n: int) -> float:
    if n == 0:
        return 1.0
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-7)))


def check_against_results(out: Path, arms: list[str], baseline: str) -> dict[str, Any]:
    """Recompute metrics.json's figures from results.csv alone (no library code)."""
    m = json.loads((out / "metrics.json").read_text())
    rows = [r for r in _results(out / "results.csv") if r["compared"] == "1"]
    n = len(rows)
    assert m["dataset"]["compared_items"] == n
    for arm in arms:
        a = m["arms"][arm]
        correct = [r[f"{arm}.correct"] == "1" for r in rows]
        for r in rows:  # correct means a valid answer equal to the label
            assert (r[f"{arm}.correct"] == "1") == (
                r[f"{arm}.valid"] == "1" and r[f"{arm}.prediction"] == r["label"]
            )
        assert a["n"] == n and a["correct"] == sum(correct)
        assert a["accuracy"] == pytest.approx(sum(correct) / n)
        assert a["invalid"] == sum(r[f"{arm}.valid"] == "0" for r in rows)
        assert a["tokens"]["prompt"] == sum(int(r[f"{arm}.prompt_tokens"]) for r in rows)
        recalls, f1s = [], []
        for pc in a["per_class"]:
            lb = pc["label"]
            tp = sum(r["label"] == lb and r[f"{arm}.prediction"] == lb for r in rows)
            support = sum(r["label"] == lb for r in rows)
            predicted = sum(r[f"{arm}.prediction"] == lb for r in rows)
            precision = tp / predicted if predicted else 0.0
            recall = tp / support
            f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
            assert pc["support"] == support and pc["correct"] == tp
            assert pc["precision"] == pytest.approx(precision)
            assert pc["recall"] == pytest.approx(recall) == pytest.approx(pc["accuracy"])
            assert pc["f1"] == pytest.approx(f1)
            recalls.append(recall)
            f1s.append(f1)
        assert len(a["per_class"]) == len({r["label"] for r in rows})
        assert a["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
        assert a["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))
        conf = a["confusion"]
        for i, t in enumerate(conf["labels"]):
            for j, p in enumerate(conf["labels"]):
                cell = sum(r["label"] == t and r[f"{arm}.prediction"] == p for r in rows)
                assert conf["matrix"][i][j] == cell
        if a["latency_ms"]:
            ms = [float(r[f"{arm}.latency_ms"]) for r in rows]
            assert a["latency_ms"]["mean"] == pytest.approx(sum(ms) / len(ms))
    base_ok = [r[f"{baseline}.correct"] == "1" for r in rows]
    for arm in arms:
        if arm == baseline:
            continue
        c = m["comparisons"][arm]
        ok = [r[f"{arm}.correct"] == "1" for r in rows]
        fixed = [r["id"] for r, b, a in zip(rows, base_ok, ok, strict=True) if a and not b]
        broken = [r["id"] for r, b, a in zip(rows, base_ok, ok, strict=True) if b and not a]
        assert c["fixed_ids"] == fixed and c["broken_ids"] == broken
        assert c["delta_accuracy"] == pytest.approx((sum(ok) - sum(base_ok)) / n)
        lo, hi = c["delta_ci"]
        assert lo <= c["delta_accuracy"] <= hi
        p = _binom_two_sided(len(fixed), len(fixed) + len(broken))
        assert c["mcnemar"]["p_value"] == pytest.approx(p, rel=1e-9)
    return m


def test_metrics_match_an_independent_recomputation(two_arms: Path) -> None:
    result = build_report(two_arms, ReportOptions())
    out = result.out_dir
    assert out == two_arms / "report"
    m = check_against_results(out, ["zero-shot", "fine-tuned"], "zero-shot")
    rows = _results(out / "results.csv")
    assert list(rows[0])[:4] == ["id", "label", "image_path", "compared"]
    assert len(rows) == 28 and sum(r["compared"] == "0" for r in rows) == 1
    assert m["dataset"]["excluded"] == [{"id": rows[5]["id"], "arms": ["fine-tuned"]}]
    assert m["baseline"] == "zero-shot" and m["arms"]["fine-tuned"]["emulated"] is True
    # Every label is listed and in the manifest order: no shifted class names.
    assert m["arms"]["zero-shot"]["confusion"]["labels"] == LABELS
    assert all(d["small_support"] for d in m["comparisons"]["fine-tuned"]["per_class"])
    for name in (
        "accuracy.png",
        "confusion-zero-shot.png",
        "cost-volume.png",
        "training-fine-tuned.png",
    ):
        assert (out / "plots" / name).stat().st_size > 1000


def test_cost_and_break_even_by_hand(two_arms: Path) -> None:
    out = build_report(two_arms, ReportOptions(volume=20_000, months=6)).out_dir
    m = json.loads((out / "metrics.json").read_text())
    price = lookup(BASE_MODEL)  # prices are data: read them, never restate them
    zs, ft = m["arms"]["zero-shot"]["cost"], m["arms"]["fine-tuned"]["cost"]
    zs_batch = (600 * price.batch_input_per_1m + 6 * price.batch_output_per_1m) / 1e6
    zs_real = (600 * price.input_per_1m + 6 * price.output_per_1m) / 1e6
    ft_real = (150 * price.finetuned_input_per_1m + 5 * price.finetuned_output_per_1m) / 1e6
    assert zs["serving_mode"] == "batch" and ft["serving_mode"] == "finetuned"
    assert zs["per_1000_batch"] == pytest.approx(zs_batch * 1000)
    assert zs["per_1000_realtime"] == pytest.approx(zs_real * 1000)
    assert ft["per_1000_realtime"] == pytest.approx(ft_real * 1000)
    assert ft["training_usd"] == pytest.approx(TRAINED * price.training_per_1m / 1e6)
    assert zs["per_correct"] == pytest.approx(zs_batch / m["arms"]["zero-shot"]["accuracy"])
    be = m["cost"]["break_even"]["fine-tuned"]
    fixed = TRAINED * price.training_per_1m / 1e6 / 6 + price.hosting_per_hour * 730
    assert be["fixed_monthly_usd"] == pytest.approx(fixed)
    assert be["kind"] == "above"
    assert be["volume_per_month"] == pytest.approx(fixed / (zs_batch - ft_real))
    assert be["extra_monthly_usd_at_volume"] == pytest.approx(fixed + 20_000 * (ft_real - zs_batch))
    text = " ".join(m["verdict"]["text"])
    assert f"pays for itself above {be['volume_per_month']:,.0f} images a month" in text
    assert "At 20,000 images a month" in text and "fine-tuned (emulated)" in text
    delta = m["comparisons"]["fine-tuned"]["delta_accuracy"]
    assert f"Fine-tuning gains {delta * 100:+.1f} pp" in text


def test_report_md_marks_emulated_numbers(two_arms: Path) -> None:
    build_report(two_arms, ReportOptions())
    md = (two_arms / "report" / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Accuracy")
    assert "Emulated:" in md and md.count("fine-tuned (emulated)") >= 5
    assert "![Accuracy per arm](plots/accuracy.png)" in md
    assert "## Error gallery" in md and "](../images/" in md


def test_different_test_ids_are_refused(two_arms: Path, capsys) -> None:
    some = [r["id"] for r in _results_ids(two_arms)][:10]
    write_arm(two_arms, "partial", lambda i, label, labels: label, ids=some)
    with pytest.raises(UserError, match="different test ids"):
        build_report(two_arms, ReportOptions(arms=["zero-shot", "partial"]))
    code, _, err = run_cli(["report", str(two_arms), "--arms", "zero-shot,partial"], capsys)
    assert code == 1 and "different test ids" in err and len(err.strip().splitlines()) == 1


def _results_ids(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "test"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "is not a directory"),
        (["{empty}"], "no arms with predictions"),
        (["{dir}", "--baseline", "nope"], "no arm 'nope'"),
        (["{dir}", "--arms", "zero-shot,ghost"], "no arm 'ghost'"),
        (["{dir}", "--arms", "zero-shot", "--baseline", "fine-tuned"], "not among --arms"),
    ],
)
def test_cli_errors_are_one_line(
    two_arms: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    subst = {
        "{missing}": str(tmp_path / "nope"),
        "{empty}": str(tmp_path / "empty"),
        "{dir}": str(two_arms),
    }
    code, _, err = run_cli(["report", *[subst.get(a, a) for a in args]], capsys)
    assert code == 1, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_one_arm_and_an_unpriced_model_still_report(tmp_path: Path, capsys) -> None:
    root = make_prepared_dir(tmp_path / "p", LABELS[:3], {"test": 4}, size=(32, 24))
    write_arm(root, "local", lambda i, label, labels: label, model="openai/my-own-model")
    code, stdout, err = run_cli(["report", str(root), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert "Run a second arm" in stdout
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["arms"]["local"]["accuracy"] == 1.0
    assert "no price for openai/my-own-model" in m["arms"]["local"]["cost"]["error"]


def test_html_opens_cleanly_in_a_real_browser(two_arms: Path, tmp_path: Path) -> None:
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set VLM_CLASSIFY_CHROMIUM)")
    build_report(two_arms, ReportOptions())
    page = open_page(two_arms / "report" / "report.html", browser)
    (tmp_path / "report.png").write_bytes(page.screenshot)
    assert page.title == "vlm-classify report"
    assert page.console_errors == []
    assert page.requests == [], "the report must be self-contained"
    assert len(page.images) >= 10
    assert all(img["loaded"] and img["width"] > 0 for img in page.images), page.images
    assert "Fine-tuning gains" in page.text and "Error gallery" in page.text
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


def test_end_to_end_against_the_emulator(tmp_path: Path, monkeypatch, capsys) -> None:
    """classify (zero-shot and a fine-tuned Azure deployment), latency, then `report`."""
    from vlm_classify.classify import ClassifyOptions, classify
    from vlm_classify.emulator import Emulator, EmulatorConfig
    from vlm_classify.runner import RunnerConfig

    root = make_prepared_dir(tmp_path / "p", LABELS[:3], {"test": 8}, size=(40, 30))
    cfg = EmulatorConfig(
        manifests=[root],
        accuracy=0.6,
        ft_accuracy=0.9,
        deployments={"gpt-4o-ft": "ft"},
        latency_profile=Path(__file__).parent / "data" / "per_request_latencies.csv",
        latency_scale=0.001,
    )
    runner = RunnerConfig(concurrency=4, initial_backoff_s=0.001, max_backoff_s=0.01)
    with Emulator(cfg) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        classify(
            root, ClassifyOptions(model="azure/gpt-4o-2024-08-06", name="zero-shot", runner=runner)
        )
        classify(
            root,
            ClassifyOptions(
                model="azure/gpt-4o-ft", name="fine-tuned", prompt="short", runner=runner
            ),
        )
        code, _, err = run_cli(
            [
                "latency",
                str(root),
                "--model",
                "azure/gpt-4o-ft",
                "--name",
                "fine-tuned",
                "--requests",
                "6",
                "--concurrency",
                "1,3",
            ],
            capsys,
        )
        assert code == 0, err
    # What `vlm-classify finetune` records (its own tests cover writing it).
    write_finetune_job(root, "ft-job", TRAINED, base_model="azure/gpt-4o-2024-08-06")
    arm_json = root / "arms" / "fine-tuned" / "arm.json"
    doc = json.loads(arm_json.read_text())
    doc["fine_tune"] = {
        "job_arm": "ft-job",
        "base_model": "azure/gpt-4o-2024-08-06",
        "trained_tokens": TRAINED,
    }
    arm_json.write_text(json.dumps(doc))

    code, stdout, err = run_cli(["report", str(root), "--volume", "5000"], capsys)
    assert code == 0, err
    assert "Fine-tuning" in stdout and "report.html" in stdout
    out = root / "report"
    m = check_against_results(out, ["zero-shot", "fine-tuned"], "zero-shot")
    assert all(a["emulated"] for a in m["arms"].values())
    ft = m["arms"]["fine-tuned"]
    assert ft["fine_tuned"] and ft["cost"]["price_entry"] == "azure/gpt-4o-2024-08-06"
    assert ft["cost"]["hosting_per_hour"] == lookup("azure/gpt-4o-2024-08-06").hosting_per_hour
    assert m["cost"]["break_even"]["fine-tuned"]["kind"] in ("above", "never")
    levels = m["latency_studies"]["fine-tuned"]["levels"]
    assert [r["concurrency"] for r in levels] == ["1", "3"]
    assert (out / "plots" / "latency-concurrency.png").is_file()
    md = (out / "report.md").read_text()
    assert "Latency study" in md and "fine-tuned (emulated)" in md


def test_the_browser_check_sees_a_broken_page(tmp_path: Path) -> None:
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set VLM_CLASSIFY_CHROMIUM)")
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body>"
        '<img src="missing.png" alt="gone"><img src="http://127.0.0.1:9/x.png" alt="far">'
        "<script>console.error('boom')</script></body></html>"
    )
    seen = open_page(page, browser)
    assert [img["loaded"] for img in seen.images] == [False, False]
    assert any("boom" in e for e in seen.console_errors)
    assert any("127.0.0.1:9" in r for r in seen.requests)
