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
DEFAULT_MGMT_ENDPOINT = "https://management.azure.com"


class DeployOptions(BaseModel):
    """Where and how to deploy; the resource names are Azure's."""

    job: str
    """The arm whose finetune.json names the fine-tuned model."""
    deployment: str = Field(min_length=1, max_length=64)
    subscription: str | None = None
    resource_group: str | None = None
    account: str | None = None
    """The Azure OpenAI resource's name."""
    sku: str = "standard"
    """`standard`, `globalstandard` or `developer`, as the region offers for fine-tuned models."""
    capacity: int = Field(1, ge=1)


class DeployResult(BaseModel):
    sent: bool
    """True when the PUT was sent; False when only the command was printed."""
    url: str
    body: dict[str, Any]
    command: str
    response: dict[str, Any] | None = None


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
    body = {
        "sku": {"name": options.sku, "capacity": options.capacity},
        "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
    }
    sub = options.subscription or "<subscription-id>"
    rg = options.resource_group or "<resource-group>"
    acct = options.account or "<resource-name>"
    endpoint = os.environ.get("AZURE_MANAGEMENT_ENDPOINT", DEFAULT_MGMT_ENDPOINT).rstrip("/")
    url = (
        f"{endpoint}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices"
        f"/accounts/{acct}/deployments/{options.deployment}?api-version={MGMT_API_VERSION}"
    )
    command = " ".join(
        [
            "az cognitiveservices account deployment create",
            f"--subscription {shlex.quote(sub)} --resource-group {shlex.quote(rg)} --name {shlex.quote(acct)}",
            f"--deployment-name {shlex.quote(options.deployment)} --model-name {shlex.quote(model)}",
            f"--model-version 1 --model-format OpenAI --sku-name {options.sku} --sku-capacity {options.capacity}",
        ]
    )
    if not (options.subscription and options.resource_group and options.account):
        # The user runs the printed command: the name is known to be this fine-tune already.
        _record_deployment(path, record, options.deployment)
        return DeployResult(sent=False, url=url, body=body, command=command)
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
    _record_deployment(path, record, options.deployment)
    return DeployResult(sent=True, url=url, body=body, command=command, response=response)


def _record_deployment(path: Path, record: dict[str, Any], deployment: str) -> None:
    """Name the deployment in finetune.json: `classify azure/<deployment>` then knows it serves
    this fine-tuned model (Azure deployment names carry no `ft` mark)."""
    record["deployments"] = sorted({*record.get("deployments", []), deployment})
    write_job(path.parent, record)
