"""Azure vision fine-tuning on gpt-4.1, offline: `finetune azure/gpt-4.1` -> `deploy` (the SKU
Azure expects for a fine-tuned gpt-4.1) -> `classify` -> the report prices its hosting from
pricing.json; and the models Azure does not fine-tune on images are refused before any upload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_classify.backends.openai.deploy import (
    DEVELOPER_API_VERSION,
    MGMT_API_VERSION,
    DeployOptions,
    deploy,
    resolve_sku,
    sku_problem,
)
from vlm_classify.backends.openai.finetune import FinetuneOptions, finetune
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.errors import UserError
from vlm_classify.pricing import lookup
from vlm_classify.report import ReportOptions, build_report
from vlm_classify.runner import RunnerConfig

FAST = RunnerConfig(concurrency=4, initial_backoff_s=0.001, max_backoff_s=0.01)
WHERE = {"subscription": "s", "resource_group": "rg", "account": "acct"}


@pytest.fixture
def emu(small_prepared: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = EmulatorConfig(
        manifests=[small_prepared],
        accuracy=0.0,
        ft_accuracy=1.0,
        ft_seconds=0.3,
        check_responses=True,
    )
    with Emulator(cfg) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        yield e
        assert e.stats.schema_errors == []


def test_finetune_deploy_classify_report_on_azure_gpt41(
    small_prepared: Path, emu: Emulator
) -> None:
    job = finetune(
        small_prepared, FinetuneOptions(model="azure/gpt-4.1", name="ft-job", poll_s=0.05)
    )
    rec = job.record
    assert rec["status"] == "succeeded" and rec["base_model"] == "azure/gpt-4.1"
    assert rec["fine_tuned_model"].startswith("gpt-4.1.ft-")  # Azure's naming
    result = deploy(small_prepared, DeployOptions(job="ft-job", deployment="dogs-41", **WHERE))
    assert result.sent and result.sku == "globalstandard"  # the default for fine-tuned gpt-4.1
    assert result.body["sku"]["name"] == "globalstandard"
    assert result.response is not None and result.response["sku"]["name"] == "globalstandard"
    assert f"api-version={MGMT_API_VERSION}" in result.url
    saved = json.loads(job.path.read_text())
    assert saved["deployments"] == ["dogs-41"]
    assert saved["deployment_skus"] == {"dogs-41": "globalstandard"}

    zs = classify(small_prepared, ClassifyOptions(model="azure/gpt-4.1", name="zs", runner=FAST))
    ft = classify(small_prepared, ClassifyOptions(model="azure/dogs-41", name="ft", runner=FAST))
    assert zs.totals["accuracy"] == 0.0 and ft.totals["accuracy"] == 1.0  # the emulator's settings
    arm = json.loads((ft.arm_dir / "arm.json").read_text())
    assert arm["fine_tune"]["job_arm"] == "ft-job" and arm["tokens_check"]["ratio"] == 1.0

    out = build_report(small_prepared, ReportOptions(baseline="zs")).out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    cost = metrics["arms"]["ft"]["cost"]
    entry = lookup("azure/gpt-4.1")
    assert cost["price_entry"] == "azure/gpt-4.1" and cost["price_mode"] == "finetuned"
    assert cost["hosting_per_hour"] == entry.hosting_per_hour == 1.7
    assert cost["training_usd"] is None  # no Azure training price for gpt-4.1 in the table
    assert any("no training price" in n for n in cost["notes"])
    assert metrics["arms"]["zs"]["cost"]["hosting_per_hour"] == 0.0
    page = (out / "report.md").read_text()
    assert "$1.70" in page and "hosting $1.70/h" in page
    assert "no training price in the table" in " ".join(metrics["verdict"]["text"])


def test_developer_tier_deployment_is_priced_as_a_serving_one(
    small_prepared: Path, emu: Emulator
) -> None:
    finetune(small_prepared, FinetuneOptions(model="azure/gpt-4.1", name="ft-job", poll_s=0.05))
    result = deploy(
        small_prepared, DeployOptions(job="ft-job", deployment="dev", sku="developer", **WHERE)
    )
    assert result.sent and result.body["sku"]["name"] == "developertier"
    assert f"api-version={DEVELOPER_API_VERSION}" in result.url
    assert "--sku-name DeveloperTier" in result.command
    classify(small_prepared, ClassifyOptions(model="azure/gpt-4.1", name="zs", runner=FAST))
    classify(small_prepared, ClassifyOptions(model="azure/dev", name="ft", runner=FAST))
    metrics = json.loads(
        (
            build_report(small_prepared, ReportOptions(baseline="zs")).out_dir / "metrics.json"
        ).read_text()
    )
    cost = metrics["arms"]["ft"]["cost"]
    assert cost["hosting_per_hour"] == 1.7
    assert any("Developer-tier" in n for n in cost["notes"])


def test_deployment_skus_follow_azures_rules() -> None:
    assert resolve_sku(None, "azure/gpt-4.1-2025-04-14") == "globalstandard"
    assert resolve_sku(None, "azure/gpt-4o-2024-08-06") == "standard"  # as before
    assert resolve_sku("Standard", "azure/gpt-4.1") == "standard"
    assert resolve_sku("global", "azure/gpt-4o-2024-08-06") == "globalstandard"
    assert resolve_sku("developer", "gpt-4.1-mini-2025-04-14.ft-" + "0" * 32) == "developertier"
    with pytest.raises(UserError, match=r"Developer-tier deployments take fine-tuned gpt-4\.1"):
        resolve_sku("developertier", "azure/gpt-4o-2024-08-06")
    with pytest.raises(UserError, match="not a deployment type"):
        resolve_sku("provisioned", "azure/gpt-4.1")
    assert sku_problem("GlobalStandard", "gpt-4.1.ft-abc") is None


def test_models_azure_does_not_fine_tune_on_images_are_refused_before_upload(
    small_prepared: Path, emu: Emulator
) -> None:
    with pytest.raises(UserError, match=r"azure/gpt-4\.1-mini cannot be fine-tuned on images"):
        finetune(small_prepared, FinetuneOptions(model="azure/gpt-4.1-mini", name="mini"))
    with pytest.raises(UserError, match=r"fine-tune openai/gpt-4o-2024-08-06 instead"):
        finetune(small_prepared, FinetuneOptions(model="openai/gpt-4.1", name="oai"))
    assert emu.stats.routes.get("POST /files", 0) == 0
    assert not any(r.startswith("POST") and "files" in r for r in emu.stats.routes)


def test_the_emulator_knows_the_same_rules(small_prepared: Path, emu: Emulator) -> None:
    import urllib.error
    import urllib.request

    import openai

    from vlm_classify.backends.openai.export import ExportOptions, export

    files = export(small_prepared, ExportOptions(model="azure/gpt-4.1-mini")).files
    train = next(f for f in files if f.kind == "train")
    client = openai.AzureOpenAI(
        azure_endpoint=emu.azure_endpoint, api_key=emu.api_key, api_version="2024-10-21"
    )
    with train.path.open("rb") as fh:
        uploaded = client.files.create(file=(train.path.name, fh), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="cannot be fine-tuned on images"):
        client.fine_tuning.jobs.create(model="gpt-4.1-mini-2025-04-14", training_file=uploaded.id)
    job = client.fine_tuning.jobs.create(model="gpt-4.1", training_file=uploaded.id)
    assert job.status == "validating_files"
    # A fine-tuned gpt-4o has no Developer tier: refused as Azure refuses it.
    finetune(
        small_prepared,
        FinetuneOptions(model="azure/gpt-4o-2024-08-06", name="ft-4o", poll_s=0.05),
    )
    record = json.loads((small_prepared / "arms" / "ft-4o" / "finetune.json").read_text())
    url = (
        f"{emu.origin}/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices"
        f"/accounts/a/deployments/x?api-version={DEVELOPER_API_VERSION}"
    )
    body = {
        "sku": {"name": "developertier", "capacity": 1},
        "properties": {"model": {"format": "OpenAI", "name": record["fine_tuned_model"]}},
    }
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {emu.api_key}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert "Developer-tier" in refused.value.read().decode()
