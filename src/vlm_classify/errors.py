"""The few error types of vlm-classify. The CLI shows their message as one line."""

from __future__ import annotations


class VlmClassifyError(Exception):
    """Base class: the message is one line, shown to the user as it is."""


class UserError(VlmClassifyError):
    """Something the user can fix (a path, a flag, a file): the message names the fix."""


class DataError(VlmClassifyError):
    """The data on disk is not what a step expects (a missing manifest, a corrupt archive)."""


class TransientError(VlmClassifyError):
    """A failure worth retrying (429, 5xx, a timeout, a dropped connection)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds the service asked us to wait (`retry-after-ms` / `retry-after`), if it said."""


class ItemError(VlmClassifyError):
    """This item cannot be answered (refused image, content filter): record it and go on."""


class FatalError(VlmClassifyError):
    """The whole run must stop (bad key, unknown model): retrying would only repeat it."""
