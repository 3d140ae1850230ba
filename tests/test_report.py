"""`report`: every number in metrics.json recomputed independently from results.csv, the cost
arithmetic by hand, refusals, one-line CLI errors, and the HTML opened in a real browser."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from statistics import NormalDist
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
from vlm_classify.report import ReportOptions, build_report, compute

LABELS = ["Beagle", "Chihuahua", "Golden Retriever", "Pug"]
Z975 = NormalDist().inv_cdf(0.975)
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


def _mid_p(k: int, n: int) -> float:
    """McNemar's mid-p: the exact two-sided tail with half the observed split's probability."""
    if n == 0:
        return 1.0
    m = min(k, n - k)
    return min(1.0, 2 * (sum(math.comb(n, i) for i in range(m)) + math.comb(n, m) / 2) / 2**n)


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
            precision = tp / predicted if predicted else None  # never predicted: undefined
            recall = tp / support
            f1 = 2 * tp / (support + predicted)
            assert pc["support"] == support and pc["correct"] == tp
            assert pc["precision"] == (None if precision is None else pytest.approx(precision))
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
            invalid = sum(r["label"] == t and r[f"{arm}.valid"] == "0" for r in rows)
            assert conf["invalid"][i] == invalid
        # Every valid prediction is one of the labels: no phantom class.
        assert {r[f"{arm}.prediction"] for r in rows} <= set(conf["labels"]) | {""}
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
        d = len(fixed) + len(broken)
        p = _binom_two_sided(len(fixed), d)
        assert c["mcnemar"]["p_value"] == pytest.approx(p, rel=1e-9)
        assert c["mcnemar"]["mid_p_value"] == pytest.approx(_mid_p(len(fixed), d), rel=1e-9)
        # Tango's interval leaves out 0 exactly when McNemar's uncorrected chi-square rejects.
        score_rejects = d > 0 and (len(fixed) - len(broken)) ** 2 / d > Z975**2
        assert c["delta_ci_method"] == "tango-score"
        assert (lo > 0 or hi < 0) == score_rejects
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


@pytest.mark.parametrize("serving", ["realtime", "batch"])
def test_cost_and_break_even_by_hand(two_arms: Path, serving: str) -> None:
    opts = ReportOptions(volume=20_000, months=6, serving=serving)  # type: ignore[arg-type]
    out = build_report(two_arms, opts).out_dir
    m = json.loads((out / "metrics.json").read_text())
    price = lookup(BASE_MODEL)  # prices are data: read them, never restate them
    zs, ft = m["arms"]["zero-shot"]["cost"], m["arms"]["fine-tuned"]["cost"]
    zs_batch = (600 * price.batch_input_per_1m + 6 * price.batch_output_per_1m) / 1e6
    zs_real = (600 * price.input_per_1m + 6 * price.output_per_1m) / 1e6
    ft_real = (150 * price.finetuned_input_per_1m + 5 * price.finetuned_output_per_1m) / 1e6
    # The zero-shot arm was evaluated through the Batch API; it is priced as --serving says.
    zs_used = zs_batch if serving == "batch" else zs_real
    assert m["cost"]["serving"] == serving and zs["evaluated_mode"] == "batch"
    assert zs["serving_mode"] == serving and zs["per_image"] == pytest.approx(zs_used)
    # The fine-tuned model has no Batch price: realtime at its fine-tuned prices either way.
    assert ft["serving_mode"] == "realtime" and ft["price_mode"] == "finetuned"
    assert any("no Batch price for fine-tuned" in n for n in ft["notes"]) == (serving == "batch")
    assert zs["per_1000_batch"] == pytest.approx(zs_batch * 1000)
    assert zs["per_1000_realtime"] == pytest.approx(zs_real * 1000)
    assert ft["per_1000_realtime"] == pytest.approx(ft_real * 1000)
    training = TRAINED * price.training_per_1m / 1e6
    assert ft["training_usd"] == pytest.approx(training)
    assert zs["per_correct"] == pytest.approx(zs_used / m["arms"]["zero-shot"]["accuracy"])
    fixed = training / 6 + price.hosting_per_hour * 730
    ft_acc = m["arms"]["fine-tuned"]["accuracy"]
    assert ft["per_correct_at_volume"] == pytest.approx(
        (fixed + 20_000 * ft_real) / (20_000 * ft_acc)
    )
    be = m["cost"]["break_even"]["fine-tuned"]
    assert be["fixed_monthly_usd"] == pytest.approx(fixed)
    assert be["kind"] == "above" and not be["training_unknown"]
    assert be["volume_per_month"] == pytest.approx(fixed / (zs_used - ft_real))
    assert be["extra_monthly_usd_at_volume"] == pytest.approx(fixed + 20_000 * (ft_real - zs_used))
    text = " ".join(m["verdict"]["text"])
    assert f"pays for itself above {be['volume_per_month']:,.0f} images a month" in text
    served = "Served realtime" if serving == "realtime" else "Served through the Batch API"
    assert f"{served}, at 20,000 images a month" in text and "fine-tuned (emulated)" in text
    assert ("cannot be served through the Batch API" in text) == (serving == "batch")
    delta = m["comparisons"]["fine-tuned"]["delta_accuracy"]
    assert f"Fine-tuning gains {delta * 100:+.1f} pp" in text
    sources = m["verdict"]["sources"]
    assert sources["fine-tuned.baseline_accuracy"] == "arms.zero-shot.accuracy"
    assert sources["fine-tuned.fixed"] == "comparisons.fine-tuned.mcnemar.fixed"
    assert sources["fine-tuned.broken"] == "comparisons.fine-tuned.mcnemar.broken"
    md = (out / "report.md").read_text()
    assert "per correct prediction (tokens only)" in md
    assert "per correct prediction at 20,000/month (all costs)" in md


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


def _zero_shot_answer(i: int, label: str, labels: list[str]) -> str | None:
    """The two_arms fixture's zero-shot answers (invalid 1 in 11, wrong 1 in 4)."""
    return None if i % 11 == 0 else wrong(label, labels) if i % 4 == 0 else label


@pytest.mark.parametrize(
    ("fixed_items", "broken_items", "says"),
    [
        # 5 fixed, 0 broken: exact p = 2 / 2^5 = 0.0625 (conservative), mid-p = 1 / 2^5, and the
        # score interval leaves out 0 (chi-square 5): no caveat.
        ({0, 4, 8, 11, 12}, set(), None),
        # 5 fixed, 1 broken: mid-p = 8 / 64, chi-square 16 / 6 = 2.7: both call it possibly chance.
        (
            {0, 4, 8, 11, 12},
            {1},
            "The interval includes zero and McNemar's mid-p is 0.12, not below 0.05: "
            "on these items the difference may be chance.",
        ),
        # 4 fixed, 0 broken: chi-square 4 > 3.84 (the interval leaves out 0), mid-p = 1 / 16.
        (
            {0, 4, 8, 12},
            set(),
            "The interval leaves out zero but McNemar's mid-p is 0.062, not below 0.05: the two "
            "disagree at the margin, so on these items the difference may be chance.",
        ),
    ],
)
def test_few_discordant_items_get_what_the_interval_and_the_test_each_say(
    two_arms: Path, fixed_items: set[int], broken_items: set[int], says: str | None
) -> None:
    def answer(i: int, label: str, labels: list[str]) -> str | None:
        if i in fixed_items:
            return label
        if i in broken_items:
            return wrong(label, labels)
        return _zero_shot_answer(i, label, labels)

    write_arm(two_arms, "tweak", answer, mode="batch")
    m, _ = compute(two_arms, ReportOptions(arms=["zero-shot", "tweak"]))
    c = m["comparisons"]["tweak"]
    mc = c["mcnemar"]
    assert (mc["fixed"], mc["broken"]) == (len(fixed_items), len(broken_items))
    d = mc["fixed"] + mc["broken"]
    assert mc["p_value"] == pytest.approx(_binom_two_sided(mc["fixed"], d))
    assert mc["mid_p_value"] == pytest.approx(_mid_p(mc["fixed"], d))
    text = " ".join(m["verdict"]["text"])
    lo, hi = c["delta_ci"]
    ci = f"(Tango score 95% CI {lo * 100:+.1f} pp to {hi * 100:+.1f} pp, McNemar mid-p = "
    assert ci in text
    assert "exact 95% CI" not in text
    if says is None:
        assert lo > 0 and "may be chance" not in text
        assert c["delta_ci_bootstrap"][0] > 0
        assert "tweak gains +17.9 pp accuracy against zero-shot" in text  # not "Fine-tuning"
    else:
        assert says in text
    assert "delta_ci_bootstrap" in m["methods"] and "Tango" in m["methods"]["delta_ci"]
    assert m["verdict"]["sources"]["tweak.mid_p"] == "comparisons.tweak.mcnemar.mid_p_value"


def test_a_losing_arm_loses_a_positive_number_of_points(two_arms: Path) -> None:
    write_arm(two_arms, "worse", lambda i, label, labels: wrong(label, labels))
    m, _ = compute(two_arms, ReportOptions(arms=["zero-shot", "worse"]))
    text = " ".join(m["verdict"]["text"])
    d = m["comparisons"]["worse"]["delta_accuracy"]
    assert f"worse loses {abs(d) * 100:.1f} pp accuracy against zero-shot" in text
    assert "loses -" not in text and "Fine-tuning" not in text


def test_unknown_training_cost_is_flagged_not_zero(two_arms: Path) -> None:
    # A fine-tune with no trained_tokens anywhere: training unknown, said and shown.
    arm_json = two_arms / "arms" / "fine-tuned" / "arm.json"
    doc = json.loads(arm_json.read_text())
    doc["fine_tune"]["trained_tokens"] = None
    arm_json.write_text(json.dumps(doc))
    job = two_arms / "arms" / "ft-job" / "finetune.json"
    job_doc = json.loads(job.read_text())
    job.write_text(json.dumps(job_doc | {"trained_tokens": None}))
    out = build_report(two_arms, ReportOptions()).out_dir
    m = json.loads((out / "metrics.json").read_text())
    ft = m["arms"]["fine-tuned"]["cost"]
    assert ft["training_usd"] is None and ft["training_known"] is False
    assert m["cost"]["break_even"]["fine-tuned"]["training_unknown"] is True
    text = " ".join(m["verdict"]["text"])
    assert "training cost of fine-tuned (emulated) is unknown" in text
    for name in ("report.md", "report.html"):
        page = (out / name).read_text()
        assert "training cost unknown: no trained_tokens recorded" in page, name
        assert "training cost unknown, left out" in page
    # finetune.json's null falls back to arm.json's record when that one has the count.
    doc["fine_tune"]["trained_tokens"] = TRAINED
    arm_json.write_text(json.dumps(doc))
    m, _ = compute(two_arms, ReportOptions())
    price = lookup(BASE_MODEL)
    assert m["arms"]["fine-tuned"]["cost"]["training_usd"] == pytest.approx(
        TRAINED * price.training_per_1m / 1e6
    )


def test_a_far_away_break_even_is_called_in_practice_never(two_arms: Path, tmp_path: Path) -> None:
    # Hosting at $1.70/h makes the fine-tune pay for itself only at millions of images a month.
    pricing = tmp_path / "pricing.json"
    pricing.write_text(json.dumps({"models": {BASE_MODEL: {"hosting_per_hour": 1.7}}}))
    out = build_report(two_arms, ReportOptions(volume=1000, pricing=pricing)).out_dir
    m = json.loads((out / "metrics.json").read_text())
    be = m["cost"]["break_even"]["fine-tuned"]
    assert be["kind"] == "above" and be["far_beyond_volume"] is True
    assert be["times_volume"] == pytest.approx(be["volume_per_month"] / 1000)
    text = " ".join(m["verdict"]["text"])
    assert "it pays for itself only above ~1.3 million images a month, 1,350× your volume" in text
    assert "in practice never" in text
    # The cost curve stops at 10x the volume rather than stretching to 100x the break-even.
    assert m["cost"]["curve"]["volumes"][-1] == pytest.approx(10_000)


def test_usd_per_error_avoided_comes_from_the_break_even_record(two_arms: Path) -> None:
    from vlm_classify.report.verdict import verdict

    pricing = two_arms / "pricing.json"  # dear fine-tuned tokens: never cheaper
    pricing.write_text(json.dumps({"models": {BASE_MODEL: {"finetuned_input_per_1m": 50.0}}}))
    m, _ = compute(two_arms, ReportOptions(pricing=pricing))
    be = m["cost"]["break_even"]["fine-tuned"]
    assert be["kind"] == "never" and be["usd_per_error_avoided"] > 0
    be["usd_per_error_avoided"] = 123.0
    text = " ".join(verdict(m)["text"])
    assert "worth more than $123.00 to you" in text
    assert verdict(m)["sources"]["fine-tuned.usd_per_error_avoided"] == (
        "cost.break_even.fine-tuned.usd_per_error_avoided"
    )


def test_invalid_answers_get_a_sentence_and_a_heatmap_column(two_arms: Path) -> None:
    out = build_report(two_arms, ReportOptions()).out_dir
    m = json.loads((out / "metrics.json").read_text())
    zs = m["arms"]["zero-shot"]
    assert zs["invalid"] == 3 and zs["invalid_rate"] >= 0.05
    text = " ".join(m["verdict"]["text"])
    assert "zero-shot: 11.1% of its answers (3 of 27) were not one of the labels" in text
    assert text.count("were not one of the labels") == 1  # the fine-tune has none
    md = (out / "report.md").read_text()
    assert "the last column counts answers that were not a label" in md
    assert "(1 items)" not in md


def test_a_valid_marked_answer_outside_the_labels_is_invalid(two_arms: Path) -> None:
    def answer(i: int, label: str, labels: list[str]) -> str | None:
        return "Poodle" if i == 1 else label

    write_arm(two_arms, "odd", answer)  # write_arm marks every non-None answer valid
    out = build_report(two_arms, ReportOptions(arms=["zero-shot", "odd"])).out_dir
    m = check_against_results(out, ["zero-shot", "odd"], "zero-shot")
    odd = m["arms"]["odd"]
    assert odd["invalid"] == 1 and "Poodle" not in odd["confusion"]["labels"]
    assert odd["top_confusions"][0]["predicted"] == "(invalid)"
    row = _results(out / "results.csv")[1]
    assert (row["odd.valid"], row["odd.prediction"]) == ("0", "")


@pytest.mark.parametrize(
    "args",
    [
        ["--volume", "nan"],
        ["--volume", "inf"],
        ["--volume", "1e300"],
        ["--months", "inf"],
        ["--months", "1e-300"],
        ["--months", "0.5"],
        ["--seed", "-1"],
    ],
)
def test_bad_numbers_are_refused_in_one_line(two_arms: Path, capsys, args: list[str]) -> None:
    out = two_arms / "r"
    code, _, err = run_cli(["report", str(two_arms), "--out", str(out), *args], capsys)
    assert code == 2, err
    assert args[0] in err and "internal error" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_nothing_is_written_when_the_report_fails(two_arms: Path, monkeypatch) -> None:
    import vlm_classify.report.render as render

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(render, "render", broken)
    with pytest.raises(RuntimeError, match="boom"):
        build_report(two_arms, ReportOptions())
    assert not (two_arms / "report").exists()
    with pytest.raises(ValueError):  # and the library refuses what the CLI refuses
        ReportOptions(volume=float("nan"))
    with pytest.raises(ValueError):
        ReportOptions(months=0.5)
