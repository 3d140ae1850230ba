"""The few error types of vlm-classify. The CLI shows their message as one line."""

from __future__ import annotations


class VlmClassifyError(Exception):
    """Base class: the message is one line, shown to the user as it is."""


class UserError(VlmClassifyError):
    """Something the user can fix (a path, a flag, a file): the message names the fix."""


class DataError(VlmClassifyError):
    """The data on disk is not what a step expects (a missing manifest, a corrupt archive)."""
