"""The HTTP transport: a threaded standard-library server that authenticates, injects faults and
latency, and writes OpenAI-shaped JSON. A thread per connection, so 16+ concurrent requests
wait on their latencies side by side.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socketserver
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..backends.openai import spec
from . import draw
from .api import CHAT_ROUTE, ApiRequest, ApiResponse, find_route, route_name, split_path
from .apierror import ApiError
from .service import AZURE_STYLES, EmulatorService
from .state import ChatArrival

log = logging.getLogger(__name__)

EMULATED_HEADER = ("X-Emulated", "vlm-classify")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$|^(preview|latest|v1)$")


class _Close(Exception):
    """End the exchange by closing the connection without a response (after `hold` seconds)."""

    def __init__(self, kind: str, hold: float = 0.0) -> None:
        super().__init__(kind)
        self.kind = kind
        self.hold = hold


def _mask(key: str) -> str:
    return key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * len(key)


def _max_tokens(req: ApiRequest) -> int | None:
    """The completion tokens a chat request allows, if it says (for the request log)."""
    try:
        body = json.loads(req.body)
    except ValueError:
        return None
    value = (
        body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(body, dict)
        else None
    )
    return value if isinstance(value, int) else None


class EmulatorHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a deep accept queue and no reverse-DNS lookup on bind."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], service: EmulatorService) -> None:
        self.service = service
        super().__init__(address, EmulatorRequestHandler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    """One connection: keep-alive HTTP/1.1, every request dispatched to the service."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_version = "vlm-classify-emulator"
    sys_version = ""
    server: EmulatorHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # --- one request -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        arrived = time.monotonic()
        svc = self.server.service
        svc.stats.bump("requests")
        started = time.perf_counter()
        request_id = "req_" + svc.store.new_id("", 32, hexa=True)
        style = "openai"
        chat: ApiRequest | None = None
        try:
            body = self._read_body()
            url = urlsplit(self.path)
            where = split_path(url.path)
            if where is None:
                raise ApiError(404, f"Invalid URL ({method} {url.path})", code="unknown_url")
            style, rest, deployment = where
            req = ApiRequest(
                method=method,
                style=style,
                rest=rest,
                query=dict(parse_qsl(url.query)),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                deployment=deployment,
            )
            handler = find_route(req)
            svc.stats.count("routes", route_name(req))
            self._authenticate(req)
            self._check_api_version(req)
            if req.rest == CHAT_ROUTE and req.method == "POST":
                chat = req
                svc.stats.bump("chat_requests")
                self._maybe_fault(req)
            response = handler(svc, req)
        except ApiError as e:
            if e.status == 400:
                svc.stats.bump("validation_errors")
            response = ApiResponse(
                e.body(), status=e.status, schema="ErrorResponse", headers=e.headers
            )
        except _Close as c:
            if chat is not None:
                svc.stats.log_chat(ChatArrival(arrived, None, None, _max_tokens(chat)))
            if c.hold > 0:
                svc.stop_event.wait(c.hold)
            self.close_connection = True
            return
        except Exception:  # any bug becomes a 500, as a server would answer
            log.exception("emulator failed on %s %s", method, self.path)
            error = ApiError(
                500, "The emulator failed on this request (see its log).", type="server_error"
            )
            response = ApiResponse(error.body(), status=500, schema="ErrorResponse")
        if chat is not None:
            usage = response.json.get("usage") if isinstance(response.json, dict) else None
            prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            svc.stats.log_chat(ChatArrival(arrived, response.status, prompt, _max_tokens(chat)))
        self._send(response, request_id, style, started)

    def _authenticate(self, req: ApiRequest) -> None:
        svc = self.server.service
        key = svc.config.api_key
        auth = req.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        given = bearer
        if req.style in AZURE_STYLES and "api-key" in req.headers:
            given = req.headers["api-key"].strip()
        if given == key:
            return
        svc.stats.bump("auth_failures")
        if req.style in AZURE_STYLES:
            raise ApiError(
                401,
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
                "for an active subscription and use a correct regional API endpoint for your resource.",
                code="401",
            )
        if not given:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        raise ApiError(401, f"Incorrect API key provided: {_mask(given)}.", code="invalid_api_key")

    def _check_api_version(self, req: ApiRequest) -> None:
        if req.style != "azure":
            return
        version = req.query.get("api-version")
        if not version:
            raise ApiError(
                404,
                "Resource not found: Azure OpenAI needs an api-version query parameter.",
                param="api-version",
                code="404",
            )
        if not _API_VERSION.match(version):
            raise ApiError(
                400,
                f"Unsupported api-version '{version}'; use a version such as 2024-10-21.",
                param="api-version",
                code="BadRequest",
            )

    def _maybe_fault(self, req: ApiRequest) -> None:
        svc = self.server.service
        config = svc.config
        n = svc.store.next_number("chat")
        u = draw.uniform(config.seed, "fault", n)
        kind, edge = None, 0.0
        for name, rate in config.faults.chat_rates():
            edge += rate
            if u < edge:
                kind = name
                break
        if kind is None:
            return
        svc.stats.count("faults", kind)
        if kind == "429":
            ms = config.retry_after_ms
            seconds = max(1, math.ceil(ms / 1000))
            headers = {
                "retry-after": str(seconds),
                "retry-after-ms": str(ms),
                "x-ratelimit-remaining-requests": "0",
            }
            if req.style in AZURE_STYLES:
                message = (
                    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                    f"{req.query.get('api-version', 'v1')} have exceeded call rate limit of your current pricing tier. "
                    f"Please retry after {seconds} second{'s' if seconds > 1 else ''}."
                )
                raise ApiError(
                    429, message, code="429", type="rate_limit_exceeded", headers=headers
                )
            raise ApiError(
                429,
                f"Rate limit reached for requests. Please try again in {ms}ms.",
                code="rate_limit_exceeded",
                type="requests",
                headers=headers,
            )
        if kind == "500":
            raise ApiError(
                500,
                "The server had an error while processing your request. Sorry about that!",
                type="server_error",
            )
        if kind == "503":
            raise ApiError(
                503,
                "The engine is currently overloaded, please try again later.",
                type="server_error",
                code="overloaded",
            )
        if kind == "timeout":
            raise _Close(kind, hold=config.timeout_hold)
        raise _Close(kind)

    def _send(self, response: ApiResponse, request_id: str, style: str, started: float) -> None:
        svc = self.server.service
        if response.content is not None:
            payload = response.content
        else:
            payload = json.dumps(response.json, ensure_ascii=False).encode("utf-8")
            if svc.config.check_responses and response.schema:
                for problem in spec.validate(response.schema, response.json)[:3]:
                    svc.stats.add_schema_error(
                        f"{self.command} {self.path} ({response.schema}): {problem}"
                    )
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header(*EMULATED_HEADER)
            self.send_header("x-request-id", request_id)
            self.send_header(
                "openai-processing-ms", str(round((time.perf_counter() - started) * 1000))
            )
            if style in AZURE_STYLES:
                self.send_header("apim-request-id", request_id[4:])
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client gave up (e.g. its own timeout)
