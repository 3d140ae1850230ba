"""`deploy`: create the Azure OpenAI deployment of a fine-tuned model (control-plane PUT).

Azure serves a fine-tuned model only once it is deployed. With subscription details and a
management token this sends the PUT itself; without them it prints the exact command to run.
"""

from __future__ import annotations

import json
import os
import shlex
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ...arms import FINETUNE_JSON, arm_dir, write_job
from ...errors import FatalError, UserError

MGMT_API_VERSION = "2024-10-01"
DEVELOPER_API_VERSION = "2025-07-01-preview"
"""The control-plane version Azure's guide uses for Developer-tier deployments (newer than
`MGMT_API_VERSION`, which predates the tier)."""
DEFAULT_MGMT_ENDPOINT = "https://management.azure.com"

SKUS = {
    "standard": "Standard",
    "globalstandard": "GlobalStandard",
    "developertier": "DeveloperTier",
}
"""Deployment types Azure offers fine-tuned models, as `sku.name` (the REST body, lower case as
in Azure's guide) -> the Azure CLI's `--sku-name`. Source: "Deploy a fine-tuned model",
Deployment types (learn.microsoft.com/azure/foundry/openai/how-to/fine-tuning-deploy, 2026-02-11),
and "Test a fine-tuned model" for `developertier`. Provisioned throughput is not offered here."""
_SKU_ALIASES = {
    "developer": "developertier",
    "global": "globalstandard",
    "global-standard": "globalstandard",
    "global_standard": "globalstandard",
}
DEVELOPER_FAMILIES = ("gpt-4.1", "o4-mini")
"""Fine-tuned models a Developer-tier deployment takes (gpt-4.1, -mini, -nano; o4-mini): every
region. Standard deployments of them exist in two regions only (North Central US, Sweden
Central), Global Standard ones in every region, so Global Standard is their default."""


def _family(model: str) -> str:
    """The base model of a model string or fine-tuned model name (`gpt-4.1-2025-04-14.ft-...`,
    `azure/gpt-4o-2024-08-06`) as a bare lower-case name."""
    name = model.partition("/")[2] if "/" in model else model
    return name.split(".ft-")[0].lower()


def sku_problem(sku: str, model: str) -> str | None:
    """Why Azure would refuse a deployment of fine-tuned `model` with `sku` (None: it takes it).
    The emulator applies the same rule."""
    name = sku.strip().lower()
    if name not in SKUS:
        return f"sku {sku!r} is not a deployment type for fine-tuned models: use {', '.join(SKUS)}"
    if name == "developertier" and not _family(model).startswith(DEVELOPER_FAMILIES):
        return (
            f"Developer-tier deployments take fine-tuned gpt-4.1 (and -mini, -nano) and o4-mini "
            f"models only, not {_family(model)}: use standard or globalstandard"
        )
    return None


def resolve_sku(sku: str | None, base_model: str) -> str:
    """The `sku.name` to deploy a fine-tune of `base_model` with: the one given (aliases
    `developer`, `global` accepted), else `globalstandard` for the gpt-4.1 family and o4-mini
    (Standard is offered in two regions only) and `standard` for the rest. UserError when Azure
    would refuse it."""
    name = (sku or "").strip().lower()
    name = _SKU_ALIASES.get(name, name)
    if not name:
        name = (
            "globalstandard" if _family(base_model).startswith(DEVELOPER_FAMILIES) else "standard"
        )
    problem = sku_problem(name, base_model)
    if problem:
        raise UserError(f"--sku: {problem}")
    return name


class DeployOptions(BaseModel):
    """Where and how to deploy; the resource names are Azure's."""

    job: str
    """The arm whose finetune.json names the fine-tuned model."""
    deployment: str = Field(min_length=1, max_length=64)
    subscription: str | None = None
    resource_group: str | None = None
    account: str | None = None
    """The Azure OpenAI resource's name."""
    sku: str | None = None
    """`standard`, `globalstandard` or `developertier` (`developer`), as the region offers for
    fine-tuned models; None: `resolve_sku`'s default for the base model."""
    capacity: int = Field(1, ge=1)


class DeployResult(BaseModel):
    sent: bool
    """True when the PUT was sent; False when only the command was printed."""
    url: str
    body: dict[str, Any]
    command: str
    response: dict[str, Any] | None = None
    sku: str = "standard"
    """The `sku.name` deployed with (`resolve_sku`)."""


def _fine_tuned_model(prepared_dir: Path, job: str) -> tuple[Path, dict[str, Any]]:
    path = arm_dir(prepared_dir, job) / FINETUNE_JSON
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise UserError(
            f"no {FINETUNE_JSON} for arm {job!r}: run `vlm-classify finetune DIR --name {job}` first"
        ) from None
    if not record.get("fine_tuned_model"):
        raise UserError(
            f"job {record.get('job_id')} of arm {job!r} has no fine-tuned model yet ({record.get('status')}): follow it with `vlm-classify finetune DIR --name {job} --follow`"
        )
    return path, record


def deploy(prepared_dir: Path, options: DeployOptions) -> DeployResult:
    """Deploy the fine-tuned model of `options.job`, or say exactly how to."""
    path, record = _fine_tuned_model(Path(prepared_dir), options.job)
    model = record["fine_tuned_model"]
    sku = resolve_sku(options.sku, str(record.get("base_model") or model))
    version = DEVELOPER_API_VERSION if sku == "developertier" else MGMT_API_VERSION
    body = {
        "sku": {"name": sku, "capacity": options.capacity},
        "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
    }
    sub = options.subscription or "<subscription-id>"
    rg = options.resource_group or "<resource-group>"
    acct = options.account or "<resource-name>"
    endpoint = os.environ.get("AZURE_MANAGEMENT_ENDPOINT", DEFAULT_MGMT_ENDPOINT).rstrip("/")
    url = (
        f"{endpoint}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices"
        f"/accounts/{acct}/deployments/{options.deployment}?api-version={version}"
    )
    command = " ".join(
        [
            "az cognitiveservices account deployment create",
            f"--subscription {shlex.quote(sub)} --resource-group {shlex.quote(rg)} --name {shlex.quote(acct)}",
            f"--deployment-name {shlex.quote(options.deployment)} --model-name {shlex.quote(model)}",
            f"--model-version 1 --model-format OpenAI --sku-name {SKUS[sku]} --sku-capacity {options.capacity}",
        ]
    )
    if not (options.subscription and options.resource_group and options.account):
        # The user runs the printed command: the name is known to be this fine-tune already.
        _record_deployment(path, record, options.deployment, sku)
        return DeployResult(sent=False, url=url, body=body, command=command, sku=sku)
    token = os.environ.get("AZURE_MANAGEMENT_TOKEN", "").strip()
    if not token:
        raise UserError(
            "AZURE_MANAGEMENT_TOKEN is not set: export AZURE_MANAGEMENT_TOKEN=$(az account get-access-token --query accessToken -o tsv)"
        )
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            response = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:300]
        if e.code in (401, 403):
            raise FatalError(
                f"the management token was refused ({e.code}): refresh AZURE_MANAGEMENT_TOKEN"
            ) from None
        raise FatalError(f"the deployment was refused ({e.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FatalError(f"cannot reach {endpoint}: {getattr(e, 'reason', e)}") from None
    _record_deployment(path, record, options.deployment, sku)
    return DeployResult(sent=True, url=url, body=body, command=command, response=response, sku=sku)


def _record_deployment(path: Path, record: dict[str, Any], deployment: str, sku: str) -> None:
    """Name the deployment in finetune.json: `classify azure/<deployment>` then knows it serves
    this fine-tuned model (Azure deployment names carry no `ft` mark); and its SKU, which the
    report reads (a Developer-tier deployment pays no hourly fee, but cannot serve)."""
    record["deployments"] = sorted({*record.get("deployments", []), deployment})
    record["deployment_skus"] = {**(record.get("deployment_skus") or {}), deployment: sku}
    write_job(path.parent, record)
