"""The few error types of vlm-classify, and its exit codes. The CLI shows an error's message as one
line."""

from __future__ import annotations

EXIT_CODES = {
    0: "success",
    1: "an error that stopped the command (the line printed names the fix)",
    2: "a usage mistake (an unknown option, a bad value)",
    3: "classify or run finished, but some items are recorded with an error (classify: rerun "
    "with --retry-failed; run: rerun the same command)",
    70: "an internal error (a bug: rerun with --debug and report it)",
    130: "interrupted (rerun the same command to resume)",
}
"""The exit codes of `vlm-classify`, as the README documents them."""
EXIT_ITEM_ERRORS = 3


class VlmClassifyError(Exception):
    """Base class: the message is one line, shown to the user as it is."""


class UserError(VlmClassifyError):
    """Something the user can fix (a path, a flag, a file): the message names the fix."""


class DataError(VlmClassifyError):
    """The data on disk is not what a step expects (a missing manifest, a corrupt archive)."""


class TransientError(VlmClassifyError):
    """A failure worth retrying (429, 5xx, a timeout, a dropped connection)."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        unreachable: UnreachableError | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds the service asked us to wait (`retry-after-ms` / `retry-after`), if it said."""
        self.unreachable = unreachable
        """Set when the service could not be reached at all (connection refused, unknown host, TLS
        failure): what to stop with if a short wait does not help and nothing of this run has
        reached the service yet (see `runner.Reachability`)."""


class ItemError(VlmClassifyError):
    """This item cannot be answered (refused image, content filter): record it and go on."""


class FatalError(VlmClassifyError):
    """The whole run must stop (bad key, unknown model): retrying would only repeat it."""


class UnreachableError(FatalError):
    """The service cannot be reached at all (nothing listening, unknown host, TLS failure) and no
    request of this run has reached it: one line naming the address and where it came from."""
