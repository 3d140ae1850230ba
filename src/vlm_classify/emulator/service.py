"""The emulated service behind the HTTP layer: models, chat, files, batches, fine-tuning jobs.

Methods take parsed requests and return API objects (dicts) or raise `ApiError`; they know
nothing of HTTP, so the same logic answers OpenAI-style and Azure-style routes.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from typing import Any

from ..backends.openai import spec, tokens
from ..pricing import image_finetune_problem
from .apierror import ApiError
from .batches import CHAT_ENDPOINTS, BatchRunner, models_in
from .chat import ChatResult, ModelRoute, complete, image_parts, image_token_count, resolve_image
from .config import FT_MARKER, EmulatorConfig
from .finetune import JobRunner
from .latency import LatencyProfile
from .oracle import GroundTruth, Oracle
from .state import FILE_PURPOSES, OWNED_BY, FileRecord, Stats, Store, page

CHAT_REQUEST = "CreateChatCompletionRequest"
AZURE_STYLES = ("azure", "azure_v1")
DEFAULT_FT_BASE = "gpt-4o-2024-08-06"
_CODES = {"type": "invalid_type", "enum": "invalid_value", "const": "invalid_value"}


@functools.cache
def known_properties(schema_name: str) -> frozenset[str]:
    """Top-level property names a request schema allows (through $ref, allOf, anyOf, oneOf)."""
    schemas = spec.load_spec()["components"]["schemas"]
    names: set[str] = set()

    def walk(node: Any, depth: int = 0) -> None:
        if not isinstance(node, dict) or depth > 10:
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            walk(schemas[ref.rsplit("/", 1)[1]], depth + 1)
        names.update(node.get("properties") or {})
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key) or []:
                walk(sub, depth + 1)

    walk(schemas[schema_name])
    return frozenset(names)


def check_request(schema_name: str, body: Any) -> None:
    """Refuse a body the way the API does: one 400 naming the first bad parameter."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_type")
    unknown = sorted(set(body) - known_properties(schema_name))
    if unknown:
        raise ApiError(
            400,
            f"Unrecognized request argument supplied: {unknown[0]}",
            param=unknown[0],
            code="unknown_parameter",
        )
    if spec.is_valid(schema_name, body):
        return
    for error in spec.iter_leaf_errors(spec.validator(schema_name), body):
        path = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = next((r for r in error.validator_value if r not in error.instance), None)
            if missing is not None:
                path.append(missing)
            param = spec.json_path(path)
            raise ApiError(
                400,
                f"Missing required parameter: '{param}'.",
                param=param,
                code="missing_required_parameter",
            )
        param = spec.json_path(path)
        code = _CODES.get(str(error.validator), "invalid_value")
        raise ApiError(400, f"Invalid value for '{param}': {error.message}", param=param, code=code)


class EmulatorService:
    """All of the emulator's behaviour; one per running emulator."""

    def __init__(self, config: EmulatorConfig, clock: Any = time.time) -> None:
        self.config = config
        self.truth = GroundTruth.load(config.manifests)
        self.oracle = Oracle(
            self.truth,
            config.seed,
            config.class_effect,
            config.kind_correlation,
            config.invalid_rate,
        )
        self.latency = (
            LatencyProfile.from_csv(config.latency_profile, config.latency_scale)
            if config.latency_profile
            else None
        )
        self.stats = Stats()
        self.stop_event = threading.Event()
        self.store = Store(config.seed, clock)
        self.store.deployments.update(config.deployments)
        self.batches = BatchRunner(
            self.store, self._answer_line, config.batch_seconds, config.batch_fail_rate, config.seed
        )
        self.jobs = JobRunner(
            self.store,
            self._example_tokens,
            config.ft_seconds,
            config.min_training_examples,
            config.organization,
            config.faults.ft_fail,
            config.seed,
            on_fault=lambda: self.stats.count("faults", "ft_fail"),
        )

    # --- models ----------------------------------------------------------------------------

    def deploy(self, deployment: str, model: str) -> None:
        """Register an Azure deployment of `model` (a model id, or `ft` for some fine-tuned model)."""
        with self.store.lock:
            self.store.deployments[deployment] = model

    def route(self, model: str | None, style: str, deployment: str | None = None) -> ModelRoute:
        """Which model answers: OpenAI names a model; Azure names a deployment."""
        self.jobs.all()  # jobs that just finished make their models available
        name = deployment or model
        if not name:
            raise ApiError(
                400,
                "Missing required parameter: 'model'.",
                param="model",
                code="missing_required_parameter",
            )
        target = name
        if style in AZURE_STYLES:
            with self.store.lock:
                mapped = self.store.deployments.get(name)
            if mapped == FT_MARKER:
                return self._route(name, name, DEFAULT_FT_BASE, True)
            target = mapped or name
        ft = self.store.ft_model(target)
        if ft is not None:
            return self._route(name, target, ft.base, True)
        minted = self._minted_base(target)
        if minted is not None:
            return self._route(name, target, minted, True)
        if target.startswith("ft:") or (style in AZURE_STYLES and ".ft-" in target):
            if style in AZURE_STYLES:
                raise ApiError(
                    404,
                    f"The API deployment {name} does not exist. If you created it within the last 5 minutes, please wait and try again.",
                    param="model",
                    code="DeploymentNotFound",
                )
            raise ApiError(
                404,
                f"The model `{target}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return self._route(name, target, target, False)

    def _minted_base(self, name: str) -> str | None:
        """The base model of a fine-tuned model name this emulator mints (any run, same seed or
        not), so models made before a restart keep answering; None for any other name."""
        org = re.escape(self.config.organization)
        m = re.match(rf"^ft:(?P<base>[^:]+):{org}:[^:]*:[A-Za-z0-9]{{8}}(:ckpt-step-\d+)?$", name)
        m = m or re.match(r"^(?P<base>[\w.-]+?)\.ft-[0-9a-f]{32}(-[^:]*)?(:ckpt-step-\d+)?$", name)
        return m.group("base") if m else None

    def _route(self, requested: str, model: str, base: str, fine_tuned: bool) -> ModelRoute:
        overrides = self.config.model_accuracy
        for key in (requested, model):
            if key in overrides:
                return ModelRoute(
                    requested, model, base, fine_tuned, f"model:{key}", overrides[key]
                )
        if fine_tuned:
            return ModelRoute(requested, model, base, True, "ft", self.config.ft_accuracy)
        return ModelRoute(requested, model, base, False, "base", self.config.accuracy)

    def model_object(self, model_id: str, created: int, owned_by: str = OWNED_BY) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}

    def list_models(self) -> dict[str, Any]:
        self.jobs.all()
        data = [self.model_object(m, 1722902400) for m in self.config.base_models]
        with self.store.lock:
            data += [self.model_object(m.id, m.created) for m in self.store.ft_models.values()]
        return {"object": "list", "data": data}

    def get_model(self, model_id: str) -> dict[str, Any]:
        self.jobs.all()
        ft = self.store.ft_model(model_id)
        if ft is not None:
            return self.model_object(model_id, ft.created)
        if model_id in self.config.base_models:
            return self.model_object(model_id, 1722902400)
        raise ApiError(
            404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )

    # --- chat ------------------------------------------------------------------------------

    def chat(
        self, body: Any, style: str, deployment: str | None = None, route: ModelRoute | None = None
    ) -> ChatResult:
        """Validate and answer one chat completion request."""
        if isinstance(body, dict) and deployment and "model" not in body:
            body = {**body, "model": deployment}
        check_request(CHAT_REQUEST, body)
        if body.get("top_logprobs") is not None and not body.get("logprobs"):
            raise ApiError(
                400,
                "Invalid value for 'top_logprobs': it can only be set when 'logprobs' is true.",
                param="top_logprobs",
                code="invalid_value",
            )
        route = route or self.route(body.get("model"), style, deployment)
        completion_id = self.store.new_id("chatcmpl-", 29)
        result = complete(
            body,
            route,
            self.oracle,
            completion_id=completion_id,
            created=int(self.store.now()),
            bill_factor=self.config.bill_factor,
        )
        if result.image is not None and not result.decision.known:
            self.stats.bump("unknown_images")
        return result

    def wait_latency(self, fine_tuned: bool) -> None:
        """Sleep a replayed latency (none without a profile); cut short when the emulator stops."""
        if self.latency is None:
            return
        n = self.store.next_number("latency")
        self.stop_event.wait(self.latency.seconds(fine_tuned, self.config.seed, n))

    def _answer_line(self, body: dict[str, Any], style: str) -> tuple[int, dict[str, Any]]:
        """One Batch line: a chat completion, or the error the realtime API would give."""
        try:
            result = self.chat(body, style)
        except ApiError as e:
            return e.status, e.body()
        return 200, result.body

    # --- files -----------------------------------------------------------------------------

    def upload(
        self, fields: dict[str, str], files: dict[str, tuple[str, memoryview]]
    ) -> dict[str, Any]:
        purpose = fields.get("purpose")
        if not purpose:
            raise ApiError(
                400,
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if "file" not in files:
            raise ApiError(
                400,
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        if purpose not in FILE_PURPOSES:
            raise ApiError(
                400,
                f"Invalid value for 'purpose': '{purpose}'. Supported values are: {', '.join(FILE_PURPOSES)}.",
                param="purpose",
                code="invalid_value",
            )
        filename, data = files["file"]
        if purpose in ("batch", "fine-tune") and not filename.lower().endswith(".jsonl"):
            api = "Batch API" if purpose == "batch" else "fine-tuning"
            raise ApiError(
                400,
                f"Invalid file format for {api}. Must be .jsonl",
                param="file",
                code="invalid_file_format",
            )
        return self.store.add_file(filename, purpose, data).to_api()

    def list_files(self, query: dict[str, str]) -> dict[str, Any]:
        with self.store.lock:
            records = list(self.store.files.values())
        if query.get("purpose"):
            records = [r for r in records if r.purpose == query["purpose"]]
        records.sort(key=lambda r: r.created_at, reverse=query.get("order", "desc") != "asc")
        chunk, more = page(records, query.get("after"), int(query.get("limit", 10000)))
        data = [r.to_api() for r in chunk]
        # The spec has first_id/last_id as required strings (the service sends null when empty).
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "",
            "has_more": more,
        }

    def get_file(self, file_id: str) -> FileRecord:
        return self.store.get_file(file_id)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        self.store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # --- batches ---------------------------------------------------------------------------

    def create_batch(self, body: Any, style: str) -> dict[str, Any]:
        checked = body
        if (
            style in AZURE_STYLES
            and isinstance(body, dict)
            and body.get("endpoint") == "/chat/completions"
        ):
            # Azure names the endpoint without /v1; the spec's enum only has /v1 paths.
            checked = {**body, "endpoint": "/v1/chat/completions"}
        check_request("CreateBatchRequest", checked)
        if body["endpoint"] not in CHAT_ENDPOINTS:
            raise ApiError(
                400,
                f"The emulator runs /v1/chat/completions batches only, not {body['endpoint']}.",
                param="endpoint",
                code="invalid_value",
            )
        input_file = self.store.get_file(body["input_file_id"], param="input_file_id")
        if input_file.purpose != "batch":
            raise ApiError(
                400,
                f"The input file {input_file.id} has purpose '{input_file.purpose}'; a batch needs a file uploaded with purpose 'batch'.",
                param="input_file_id",
                code="invalid_value",
            )
        if style in AZURE_STYLES:
            for model in models_in(input_file.lines()):
                try:
                    route = self.route(model, style)
                except ApiError:
                    continue  # the batch line fails on its own later
                if route.fine_tuned:
                    raise ApiError(
                        400,
                        f"The Batch API does not support fine-tuned deployments ('{model}'): "
                        "send these requests to the deployment's chat completions endpoint instead.",
                        param="input_file_id",
                        code="OperationNotSupported",
                    )
        return self.batches.create(body, style, input_file).to_api()

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self.batches.get(batch_id).to_api()

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self.batches.cancel(batch_id).to_api()

    def list_batches(self, query: dict[str, str]) -> dict[str, Any]:
        chunk, more = page(self.batches.all(), query.get("after"), int(query.get("limit", 20)))
        data = [r.to_api() for r in chunk]
        out: dict[str, Any] = {"object": "list", "data": data, "has_more": more}
        if data:
            out["first_id"], out["last_id"] = data[0]["id"], data[-1]["id"]
        return out

    # --- fine-tuning -----------------------------------------------------------------------

    def create_job(self, body: Any, style: str) -> dict[str, Any]:
        check_request("CreateFineTuningJobRequest", body)
        model = body["model"]
        ft = self.store.ft_model(model)
        if model not in self.config.finetunable_models and ft is None:
            raise ApiError(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                param="model",
                code="model_not_available",
            )
        method = body.get("method") or {}
        if method and method.get("type") != "supervised":
            raise ApiError(
                400,
                f"The emulator runs supervised fine-tuning only, not {method.get('type')!r}.",
                param="method.type",
                code="invalid_value",
            )
        for param in ("training_file", "validation_file"):
            file_id = body.get(param)
            if file_id is None:
                continue
            record = self.store.get_file(file_id, param=param)
            if record.purpose != "fine-tune":
                raise ApiError(
                    400,
                    f"File {file_id} has purpose '{record.purpose}'; fine-tuning needs a file uploaded with purpose 'fine-tune'.",
                    param=param,
                    code="invalid_file_purpose",
                )
        provider = "azure" if style in AZURE_STYLES else "openai"
        problem = image_finetune_problem(f"{provider}/{ft.base if ft else model}")
        if problem and self._has_images(body["training_file"]):
            raise ApiError(400, f"{problem}.", param="training_file", code="invalid_training_file")
        job = self.jobs.create(body, style, self.store.next_number("ftjob"))
        return job.to_api()

    def _has_images(self, file_id: str) -> bool:
        """Whether a training file's examples carry images (read line by line)."""
        record = self.store.get_file(file_id, param="training_file")
        return any(b'"image_url"' in line for line in record.lines())

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self.jobs.get(job_id).to_api()

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.jobs.cancel(job_id).to_api()

    def list_jobs(self, query: dict[str, str]) -> dict[str, Any]:
        chunk, more = page(self.jobs.all(), query.get("after"), int(query.get("limit", 20)))
        return {"object": "list", "data": [r.to_api() for r in chunk], "has_more": more}

    def job_events(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        events = self.jobs.visible_events(self.jobs.get(job_id))
        chunk, more = page(
            events, query.get("after"), int(query.get("limit", 20)), key=lambda e: e["id"]
        )
        return {"object": "list", "data": chunk, "has_more": more}

    def job_checkpoints(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        ckpts = self.jobs.visible_checkpoints(self.jobs.get(job_id))
        chunk, more = page(
            ckpts, query.get("after"), int(query.get("limit", 10)), key=lambda c: c["id"]
        )
        return {
            "object": "list",
            "data": chunk,
            "first_id": chunk[0]["id"] if chunk else None,
            "last_id": chunk[-1]["id"] if chunk else None,
            "has_more": more,
        }

    def _example_tokens(self, messages: list[dict[str, Any]], model: str, where: str) -> int:
        """Tokens of one training example: text by the chat rule, plus each image."""
        total = tokens.count_chat_tokens(messages)
        for param, image_url in image_parts(messages):
            try:
                image = resolve_image(image_url, param, self.oracle)
            except ApiError as e:
                if e.code != "invalid_image_url" or str(image_url.get("url", "")).startswith(
                    "data:"
                ):
                    raise
                # The service downloads plain URLs; here an unknown one counts as a 512px image.
                total += tokens.image_tokens(512, 512, "high")
                continue
            total += image_token_count(image, model)
        return total
