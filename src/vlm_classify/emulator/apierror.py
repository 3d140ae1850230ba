"""The one error type of the emulator's API: rendered as OpenAI's `{"error": {...}}` body."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the emulator answers with, shaped like OpenAI's `{"error": {...}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
