"""Retirement and availability warnings: the rule (past, within the amortisation horizon,
beyond it; zero-shot against fine-tuned arms; Azure's deployment retirement), the shipped dates,
overrides, and the warnings in `estimate` and the report."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cli_support import run_cli
from conftest import make_prepared_dir
from report_support import FT_MODEL, ft_extra, write_arm, write_finetune_job
from vlm_classify.errors import UserError
from vlm_classify.estimate import EstimateOptions, estimate
from vlm_classify.lifecycle import ArmKind, Lifecycle, warnings
from vlm_classify.pricing import lifecycle_warnings, load_pricing
from vlm_classify.report import ReportOptions, build_report

TODAY = dt.date(2026, 12, 1)
OTHER_DAY = dt.date(2026, 11, 1)
"""Not the machine's date, so the commands' tests show the date is really replaced."""
SHIPPED = Path(__file__).parents[1] / "src" / "vlm_classify" / "data" / "pricing.json"
ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _on(day: str, note: str = "") -> dict[str, Any]:
    return {"date": day, "source": "https://example.com/retirements", "checked": "2026-11-30"} | (
        {"note": note} if note else {}
    )


def _warn(
    kind: ArmKind | None, months: float = 12, provider: str = "openai", **dates: str
) -> list[str]:
    lc = Lifecycle.model_validate({k: _on(v) for k, v in dates.items()})
    return warnings(lc, provider=provider, name="p/m", kind=kind, today=TODAY, months=months)


# --- the rule ---------------------------------------------------------------------------------


def test_a_past_date_says_it_already_happened() -> None:
    (w,) = _warn("zero-shot", shutdown_on="2026-11-30")
    assert w.startswith("p/m: OpenAI shut it down on 2026-11-30: the model no longer answers")
    assert "(source: https://example.com/retirements, checked 2026-11-30)" in w
    assert "from today" not in w


def test_a_date_within_the_horizon_says_how_far_and_why_it_matters() -> None:
    (w,) = _warn("zero-shot", shutdown_on="2027-01-14")
    assert "OpenAI shuts it down on 2027-01-14, 44 days from today" in w
    assert "within the 12 months the report spreads training over" in w
    assert "the model stops answering then" in w
    (far,) = _warn("zero-shot", shutdown_on="2027-10-01")
    assert "10.0 months from today" in far
    (today,) = _warn("zero-shot", shutdown_on="2026-12-01")
    assert "2026-12-01, today," in today


def test_a_date_beyond_the_horizon_gives_nothing() -> None:
    assert _warn("zero-shot", shutdown_on="2028-01-14") == []
    assert _warn(None, finetuning_ends_on="2027-12-31", shutdown_on="2028-06-01") == []
    # the horizon is --months: 3 months leaves out a date 4 months away
    assert _warn("zero-shot", months=3, shutdown_on="2027-04-01") == []
    (w,) = _warn("zero-shot", months=5, shutdown_on="2027-04-01")
    assert "within the 5 months" in w


def test_a_fine_tuned_arm_is_warned_of_training_and_of_its_fine_tune_dying() -> None:
    dates = {"finetuning_ends_on": "2027-01-06", "shutdown_on": "2027-01-14"}
    ft = _warn("fine-tuned", **dates)
    assert len(ft) == 2
    assert "stops new fine-tuning jobs on 2027-01-06, 36 days from today" in ft[0]
    assert "no fine-tune of it can be trained or retrained after that" in ft[0]
    assert "the fine-tune stops answering then" in ft[1]
    # a zero-shot arm does not care when fine-tuning ends
    (zs,) = _warn("zero-shot", **dates)
    assert "shuts it down on 2027-01-14" in zs and "fine-tuning" not in zs
    # both (what estimate prices): in date order, the shutdown naming both
    both = _warn(None, **dates)
    assert [w[:60] for w in both] == [w[:60] for w in ft]
    assert "the model and fine-tunes built on it stop answering then" in both[1]
    past = _warn("fine-tuned", finetuning_ends_on="2026-07-02")
    assert past == [
        "p/m: OpenAI stopped new fine-tuning jobs on 2026-07-02: a fine-tune of it can no longer "
        "be trained or retrained (source: https://example.com/retirements, checked 2026-11-30)"
    ]


def test_azure_fine_tuned_deployments_follow_their_own_date() -> None:
    dates = {
        "shutdown_on": "2026-10-01",
        "finetuning_ends_on": "2027-04-01",
        "deployment_retires_on": "2027-03-31",
    }
    ft = _warn("fine-tuned", provider="azure", **dates)
    # the base model's shutdown does not end a fine-tuned deployment: its own date does
    assert not any("shut it down" in w for w in ft)
    assert ft[0].startswith(
        "p/m: Azure retires fine-tuned deployments of it on 2027-03-31, 3.9 months from today"
    )
    assert "the fine-tuned deployment stops answering then" in ft[0]
    assert "Azure stops new fine-tuning jobs on 2027-04-01" in ft[1]
    (zs,) = _warn("zero-shot", provider="azure", **dates)
    assert zs.startswith("p/m: Azure shut it down on 2026-10-01: the model no longer answers")
    gone = _warn("fine-tuned", provider="azure", deployment_retires_on="2026-11-01")
    assert "Azure retired fine-tuned deployments of it on 2026-11-01" in gone[0]
    assert "the fine-tuned deployment no longer answers" in gone[0]


def test_deprecation_is_said_only_when_no_shutdown_date_is_known() -> None:
    (w,) = _warn("zero-shot", deprecated_on="2026-10-14")
    assert "deprecated it on 2026-10-14" in w and "check the source" in w
    (only,) = _warn("zero-shot", deprecated_on="2026-10-14", shutdown_on="2027-01-14")
    assert "shuts it down" in only


def test_a_note_travels_with_its_warning() -> None:
    lc = Lifecycle.model_validate({"shutdown_on": _on("2027-01-14", "replacement: x")})
    (w,) = warnings(lc, provider="openai", name="m", kind="zero-shot", today=TODAY)
    assert "stops answering then; replacement: x (source:" in w


# --- the shipped data ---------------------------------------------------------------------------


def test_every_shipped_date_has_a_source_url_and_iso_days() -> None:
    raw = json.loads(SHIPPED.read_text(encoding="utf-8"))["models"]
    seen = 0
    for key, fields in raw.items():
        for event, rec in fields.get("lifecycle", {}).items():
            where = f"{key} {event}"
            assert event in Lifecycle.model_fields, where
            assert ISO_DAY.fullmatch(rec["date"]), where
            assert ISO_DAY.fullmatch(rec["checked"]), where
            assert rec["source"].startswith("https://"), where
            dt.date.fromisoformat(rec["date"])
            seen += 1
    assert seen >= 8
    # the gpt-4o generation carries its dates (newer models: none published yet), and they load
    dated = [k for k in raw if "gpt-4o" in k]
    assert len(dated) == 3 and all(raw[k].get("lifecycle") for k in dated)
    assert all(e.lifecycle.shutdown_on for e in load_pricing().entries if "gpt-4o" in e.key)


def test_shipped_gpt_4o_dates() -> None:
    table = load_pricing()
    oa = table.lookup("openai/gpt-4o-2024-08-06").lifecycle
    assert oa.shutdown_on and oa.shutdown_on.date == dt.date(2027, 1, 14)
    assert oa.finetuning_ends_on and oa.finetuning_ends_on.date == dt.date(2027, 1, 6)
    az = table.lookup("azure/gpt-4o-2024-08-06-ft").lifecycle
    assert az.deployment_retires_on and az.shutdown_on and az.finetuning_ends_on
    # the fine-tunes of the alias and of the snapshot die with it
    (w,) = lifecycle_warnings("openai/gpt-4o", "zero-shot", today=TODAY)
    assert "2027-01-14" in w
    ft = lifecycle_warnings(FT_MODEL, "fine-tuned", today=TODAY)
    assert [w.split(": ", 1)[0] for w in ft] == [FT_MODEL, FT_MODEL]


def test_a_model_past_its_shipped_date_is_warned_of() -> None:
    (w,) = lifecycle_warnings("openai/gpt-4o-2024-08-06", "zero-shot", today=dt.date(2027, 2, 1))
    assert w.startswith("openai/gpt-4o-2024-08-06: OpenAI shut it down on 2027-01-14:")
    assert "developers.openai.com/api/docs/deprecations" in w
    azure = lifecycle_warnings("azure/gpt-4o-2024-08-06", "zero-shot", today=TODAY)
    assert azure[0].startswith("azure/gpt-4o-2024-08-06: Azure shut it down on 2026-10-01:")


def test_an_unpriced_model_has_no_dates() -> None:
    assert lifecycle_warnings("clip/ViT-B-32", "zero-shot", today=TODAY) == []


# --- overrides -------------------------------------------------------------------------------


def _prices(tmp_path: Path, models: dict[str, Any]) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": models}), encoding="utf-8")
    return path


def test_an_override_replaces_the_dates_it_names(tmp_path: Path) -> None:
    f = _prices(
        tmp_path,
        {
            "openai/gpt-4o-2024-08-06": {
                "lifecycle": {"shutdown_on": _on("2028-06-30"), "finetuning_ends_on": None}
            }
        },
    )
    lc = load_pricing(f).lookup("openai/gpt-4o-2024-08-06").lifecycle
    assert lc.shutdown_on and lc.shutdown_on.date == dt.date(2028, 6, 30)
    assert lc.shutdown_on.source == "https://example.com/retirements"
    assert lc.finetuning_ends_on is None  # cleared
    assert lc.deprecated_on is not None  # kept from the shipped entry
    assert lifecycle_warnings("openai/gpt-4o-2024-08-06", None, pricing=f, today=TODAY) == []


def test_an_override_date_needs_its_source(tmp_path: Path) -> None:
    f = _prices(
        tmp_path,
        {"openai/gpt-4o-2024-08-06": {"lifecycle": {"shutdown_on": {"date": "2028-06-30"}}}},
    )
    with pytest.raises(UserError, match=r"lifecycle\.shutdown_on\.source: Field required"):
        load_pricing(f)


# --- estimate and the report --------------------------------------------------------------------


def test_estimate_warns_of_gpt_4o(small_prepared: Path) -> None:
    est = estimate(small_prepared, EstimateOptions(model="openai/gpt-4o-2024-08-06"), today=TODAY)
    assert len(est.lifecycle) == 2
    assert "OpenAI stops new fine-tuning jobs on 2027-01-06" in est.lifecycle[0]
    assert "OpenAI shuts it down on 2027-01-14, 44 days from today" in est.lifecycle[1]
    assert est.to_json()["lifecycle"] == est.lifecycle
    later = estimate(
        small_prepared, EstimateOptions(model="openai/gpt-4o-2024-08-06"), today=dt.date(2024, 1, 1)
    )
    assert later.lifecycle == []


def test_estimate_cli_prints_each_warning_after_the_table(
    small_prepared: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vlm_classify.pricing.current_date", lambda: OTHER_DAY)
    args = ["estimate", str(small_prepared), "--model", "openai/gpt-4o-2024-08-06"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(lines) == 2
    assert "stops new fine-tuning jobs on 2027-01-06, 2.2 months from today" in lines[0]
    assert "shuts it down on 2027-01-14, 2.4 months from today" in lines[1]
    assert out.index("hosting") < out.index("warning:")
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    assert "2027-01-14" in json.loads(out)["lifecycle"][1]
    code, out, err = run_cli([*args, "--months", "2.3"], capsys)
    assert code == 0, err
    assert out.count("warning:") == 1  # 66 days is within 2.3 months, 74 days beyond


def test_the_report_warns_per_arm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vlm_classify.pricing.current_date", lambda: OTHER_DAY)
    labels = ["Beagle", "Chihuahua", "Pug"]
    root = make_prepared_dir(tmp_path / "p", labels, {"train": 1, "test": 4}, size=(32, 24))
    write_arm(root, "zero-shot", lambda i, label, labels: label)
    write_finetune_job(root, "ft-job", 1000)
    write_arm(
        root,
        "fine-tuned",
        lambda i, label, labels: label,
        model=FT_MODEL,
        emulated=True,
        extra=ft_extra("ft-job", 1000),
    )
    write_arm(root, "unpriced", lambda i, label, labels: label, model="openai/my-own-model")
    build_report(root, ReportOptions())
    m = json.loads((root / "report" / "metrics.json").read_text())
    zs, ft = m["arms"]["zero-shot"]["lifecycle"], m["arms"]["fine-tuned"]["lifecycle"]
    assert len(zs) == 1 and "OpenAI shuts it down on 2027-01-14" in zs[0]
    assert "the model stops answering then" in zs[0]
    assert len(ft) == 2 and ft[0].startswith(f"{FT_MODEL}: OpenAI stops new fine-tuning jobs")
    assert "the fine-tune stops answering then" in ft[1]
    assert m["arms"]["unpriced"]["lifecycle"] == []
    assert "2.4 months from today" in zs[0]
    assert "from 2026-11-01, the day the report was built" in m["methods"]["lifecycle"]
    retire = [s for s in m["verdict"]["text"] if s.startswith("Retirement: ")]
    assert len(retire) == 3
    assert m["verdict"]["sources"]["fine-tuned.lifecycle"] == "arms.fine-tuned.lifecycle"
    md = (root / "report" / "report.md").read_text()
    assert md.index("Retirement: openai/gpt-4o-2024-08-06: OpenAI shuts it down") < md.index(
        "## Accuracy"
    )
    assert "2027-01-14" in (root / "report" / "report.html").read_text()
    # --months 2: 66 and 74 days away are beyond the horizon
    build_report(root, ReportOptions(months=2))
    m = json.loads((root / "report" / "metrics.json").read_text())
    assert m["arms"]["zero-shot"]["lifecycle"] == [] and m["arms"]["fine-tuned"]["lifecycle"] == []
