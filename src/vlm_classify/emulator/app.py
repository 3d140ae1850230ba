"""`Emulator`: the server in a background thread, for tests and demos (or in the foreground)."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from .config import EmulatorConfig
from .server import EmulatorHTTPServer
from .service import EmulatorService
from .state import Stats

AZURE_API_VERSION = "2024-10-21"
"""The api-version printed for clients (any YYYY-MM-DD[-preview] is accepted)."""


class Emulator:
    """A running OpenAI / Azure OpenAI emulator.

    >>> with Emulator(EmulatorConfig(manifests=[prepared_dir])) as emu:
    ...     client = openai.OpenAI(base_url=emu.base_url, api_key=emu.api_key)
    """

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        base = config or EmulatorConfig()
        self.config = base.model_copy(update=overrides) if overrides else base
        self.service = EmulatorService(self.config)
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def _bind(self) -> EmulatorHTTPServer:
        if self._server is None:
            self._server = EmulatorHTTPServer((self.config.host, self.config.port), self.service)
        return self._server

    def start(self) -> Emulator:
        """Listen and serve from a daemon thread; returns self."""
        if self._thread is not None:
            return self
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="vlm-classify-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI's foreground mode)."""
        server = self._bind()
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            self.service.stop_event.set()
            server.server_close()

    def stop(self) -> None:
        """Stop serving; held requests (latency, timeout faults) are released at once."""
        self.service.stop_event.set()
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(timeout=5)
            self._server.server_close()
        self._server = None
        self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- where it is -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._bind().server_address[1])

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def origin(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI style, for `openai.OpenAI(base_url=...)`: ends in /v1."""
        return f"{self.origin}/v1"

    @property
    def azure_endpoint(self) -> str:
        """For `openai.AzureOpenAI(azure_endpoint=...)` (routes under /openai, with api-version)."""
        return self.origin

    @property
    def azure_v1_base_url(self) -> str:
        """Azure's newer v1 API, for `openai.OpenAI(base_url=...)`: ends in /openai/v1."""
        return f"{self.origin}/openai/v1"

    @property
    def api_key(self) -> str:
        return self.config.api_key

    @property
    def stats(self) -> Stats:
        """Live counters: requests, chat requests, faults by kind, schema errors..."""
        return self.service.stats

    def env(self) -> dict[str, str]:
        """Environment variables that point the OpenAI SDK (and this tool) at the emulator."""
        return {
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_KEY": self.api_key,
            "AZURE_OPENAI_ENDPOINT": self.azure_endpoint,
            "AZURE_OPENAI_API_KEY": self.api_key,
            "OPENAI_API_VERSION": AZURE_API_VERSION,
            "AZURE_MANAGEMENT_ENDPOINT": self.origin,
            "AZURE_MANAGEMENT_TOKEN": self.api_key,
        }

    def deploy(self, deployment: str, model: str) -> None:
        """Register an Azure deployment (`model`: a model id, or `ft` for a fine-tuned one)."""
        self.service.deploy(deployment, model)
