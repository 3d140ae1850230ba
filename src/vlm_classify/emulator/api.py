"""The routes: OpenAI's `/v1/...`, Azure's `/openai/...?api-version=` (with deployments) and
Azure's newer `/openai/v1/...`, each mapped to one service call. No sockets here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..backends.openai.deploy import sku_problem
from .apierror import ApiError
from .service import EmulatorService

JSON = "application/json"


@dataclass
class ApiRequest:
    """An HTTP request, reduced to what the routes need."""

    method: str
    style: str
    """`openai`, `azure` (`/openai/...?api-version=`) or `azure_v1` (`/openai/v1/...`)."""
    rest: str
    """The path after the style's prefix, e.g. `/chat/completions`."""
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes
    deployment: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. "
                "The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            ) from None

    def form(self) -> tuple[dict[str, str], dict[str, tuple[str, memoryview]]]:
        return parse_multipart(self.body, self.headers.get("content-type", ""))


@dataclass
class ApiResponse:
    """What to send back: JSON (checked against `schema` when asked) or raw bytes."""

    json: Any = None
    status: int = 200
    content: bytes | None = None
    content_type: str = JSON
    schema: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


_MGMT = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.CognitiveServices/accounts/[^/]+(/.*)$",
    re.IGNORECASE,
)
"""Azure's control plane (management.azure.com): only deployments are emulated."""


def split_path(path: str) -> tuple[str, str, str | None] | None:
    """`(style, rest, deployment)` for a request path, None when no API lives there."""
    m = _MGMT.match(path)
    if m:
        return "azure_mgmt", m.group(1), None
    if path == "/openai/v1" or path.startswith("/openai/v1/"):
        return "azure_v1", path[len("/openai/v1") :] or "/", None
    m = re.match(r"^/openai/deployments/([^/]+)(/.*)?$", path)
    if m:
        return "azure", m.group(2) or "/", unquote(m.group(1))
    if path.startswith("/openai/"):
        return "azure", path[len("/openai") :], None
    if path.startswith("/v1/"):
        return "openai", path[len("/v1") :], None
    return None


def parse_multipart(
    body: bytes, content_type: str
) -> tuple[dict[str, str], dict[str, tuple[str, memoryview]]]:
    """`(fields, files)` of a multipart/form-data body (files: name -> (filename, content)).

    A file's content is a view into `body`, not a copy: an upload of a few hundred MB (a Batch
    input, a training file) then costs its size once, not once per slice.
    """
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if "multipart/form-data" not in content_type.lower() or not m:
        raise ApiError(
            400,
            "Expected a multipart/form-data body with 'file' and 'purpose'.",
            code="invalid_request",
        )
    delimiter = b"--" + m.group(1).encode("latin-1")
    view = memoryview(body)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, memoryview]] = {}
    at = body.find(delimiter)
    while at >= 0:
        start = at + len(delimiter)
        at = body.find(delimiter, start)
        if body.startswith(b"--", start):
            break
        end = len(body) if at < 0 else at
        if body.startswith(b"\r\n", start):
            start += 2
        split = body.find(b"\r\n\r\n", start, end)
        if split < 0:
            continue
        head = body[start:split]
        start = split + 4
        if end - start >= 2 and body.startswith(b"\r\n", end - 2):
            end -= 2
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if not name:
            continue
        if filename:
            files[name.group(1)] = (filename.group(1), view[start:end])
        else:
            fields[name.group(1)] = body[start:end].decode("utf-8", "replace")
    return fields, files


Handler = Callable[[EmulatorService, ApiRequest], ApiResponse]


def _put_deployment(svc: EmulatorService, req: ApiRequest) -> ApiResponse:
    """Azure control plane: create or update a deployment of a (fine-tuned) model."""
    if req.style != "azure_mgmt":
        raise ApiError(404, f"Invalid URL ({req.method} {req.rest})", code="unknown_url")
    body = req.json()
    model = ((body or {}).get("properties") or {}).get("model") or {}
    sku = (body or {}).get("sku") or {}
    if not isinstance(model.get("name"), str) or not model["name"] or not sku.get("name"):
        raise ApiError(
            400,
            "The deployment needs sku.name and properties.model.name (and format 'OpenAI').",
            code="InvalidPayload",
        )
    name = req.params["name"]
    fine_tuned = ".ft-" in model["name"] or svc.store.ft_model(model["name"]) is not None
    problem = sku_problem(str(sku["name"]), model["name"]) if fine_tuned else None
    if problem:
        raise ApiError(
            400,
            f"The deployment of {model['name']} was refused: {problem}.",
            code="InvalidResourceProperties",
        )
    svc.deploy(name, model["name"])
    return ApiResponse(
        {
            "id": req.rest,
            "name": name,
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "sku": sku,
            "properties": {"model": model, "provisioningState": "Succeeded"},
        },
        status=201,
    )


def _chat(svc: EmulatorService, req: ApiRequest) -> ApiResponse:
    result = svc.chat(req.json(), req.style, req.deployment)
    svc.wait_latency(result.route.fine_tuned)
    svc.stats.bump("answered")
    image = "none" if result.image is None else ("known" if result.decision.known else "unknown")
    return ApiResponse(
        result.body, schema="CreateChatCompletionResponse", headers={"x-emulated-image": image}
    )


def _upload(svc: EmulatorService, req: ApiRequest) -> ApiResponse:
    fields, files = req.form()
    return ApiResponse(svc.upload(fields, files), schema="OpenAIFile")


def _file_content(svc: EmulatorService, req: ApiRequest) -> ApiResponse:
    record = svc.get_file(req.params["id"])
    return ApiResponse(content=record.read(), content_type="application/octet-stream")


def _json(fn: Callable[[EmulatorService, ApiRequest], Any], schema: str) -> Handler:
    def handler(svc: EmulatorService, req: ApiRequest) -> ApiResponse:
        return ApiResponse(fn(svc, req), schema=schema)

    return handler


ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(f"^{pattern}$"), handler)
    for method, pattern, handler in [
        ("POST", r"/chat/completions", _chat),
        ("PUT", r"/deployments/(?P<name>[^/]+)", _put_deployment),
        ("POST", r"/files", _upload),
        ("GET", r"/files", _json(lambda s, r: s.list_files(r.query), "ListFilesResponse")),
        (
            "GET",
            r"/files/(?P<id>[^/]+)",
            _json(lambda s, r: s.get_file(r.params["id"]).to_api(), "OpenAIFile"),
        ),
        (
            "DELETE",
            r"/files/(?P<id>[^/]+)",
            _json(lambda s, r: s.delete_file(r.params["id"]), "DeleteFileResponse"),
        ),
        ("GET", r"/files/(?P<id>[^/]+)/content", _file_content),
        ("POST", r"/batches", _json(lambda s, r: s.create_batch(r.json(), r.style), "Batch")),
        ("GET", r"/batches", _json(lambda s, r: s.list_batches(r.query), "ListBatchesResponse")),
        (
            "GET",
            r"/batches/(?P<id>[^/]+)",
            _json(lambda s, r: s.get_batch(r.params["id"]), "Batch"),
        ),
        (
            "POST",
            r"/batches/(?P<id>[^/]+)/cancel",
            _json(lambda s, r: s.cancel_batch(r.params["id"]), "Batch"),
        ),
        (
            "POST",
            r"/fine_tuning/jobs",
            _json(lambda s, r: s.create_job(r.json(), r.style), "FineTuningJob"),
        ),
        (
            "GET",
            r"/fine_tuning/jobs",
            _json(lambda s, r: s.list_jobs(r.query), "ListPaginatedFineTuningJobsResponse"),
        ),
        (
            "GET",
            r"/fine_tuning/jobs/(?P<id>[^/]+)",
            _json(lambda s, r: s.get_job(r.params["id"]), "FineTuningJob"),
        ),
        (
            "POST",
            r"/fine_tuning/jobs/(?P<id>[^/]+)/cancel",
            _json(lambda s, r: s.cancel_job(r.params["id"]), "FineTuningJob"),
        ),
        (
            "GET",
            r"/fine_tuning/jobs/(?P<id>[^/]+)/events",
            _json(
                lambda s, r: s.job_events(r.params["id"], r.query),
                "ListFineTuningJobEventsResponse",
            ),
        ),
        (
            "GET",
            r"/fine_tuning/jobs/(?P<id>[^/]+)/checkpoints",
            _json(
                lambda s, r: s.job_checkpoints(r.params["id"], r.query),
                "ListFineTuningJobCheckpointsResponse",
            ),
        ),
        ("GET", r"/models", _json(lambda s, r: s.list_models(), "ListModelsResponse")),
        ("GET", r"/models/(?P<id>.+)", _json(lambda s, r: s.get_model(r.params["id"]), "Model")),
    ]
]
CHAT_ROUTE = "/chat/completions"


def find_route(req: ApiRequest) -> Handler:
    """The handler for a request (filling `req.params`), or a 404 like the API's."""
    if req.deployment is not None and req.rest != CHAT_ROUTE:
        raise ApiError(
            404,
            f"Invalid URL ({req.method} {req.rest}): the emulator serves only chat completions on deployments.",
            code="404",
        )
    for method, pattern, handler in ROUTES:
        m = pattern.match(req.rest)
        if m and method == req.method:
            req.params = {k: unquote(v) for k, v in m.groupdict().items()}
            return handler
    raise ApiError(404, f"Invalid URL ({req.method} {req.rest})", code="unknown_url")


def route_name(req: ApiRequest) -> str:
    """`METHOD /path` with ids replaced by placeholders, for the stats."""
    path = req.rest
    for _, pattern, _ in ROUTES:
        m = pattern.match(path)
        if m:
            for name, value in m.groupdict().items():
                path = path.replace(value, "{" + name + "}", 1)
            break
    prefix = {
        "openai": "/v1",
        "azure": "/openai",
        "azure_v1": "/openai/v1",
        "azure_mgmt": "/subscriptions/{subscription}/.../accounts/{account}",
    }[req.style]
    if req.deployment is not None:
        prefix += "/deployments/{deployment}"
    return f"{req.method} {prefix}{path}"
