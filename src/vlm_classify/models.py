"""Model strings: `PROVIDER/MODEL`, split at the first slash (`openai/gpt-4o-2024-08-06`)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .errors import UserError

OPENAI_PROVIDERS = ("openai", "azure")
"""Providers spoken through the `openai` SDK (any OpenAI-compatible server is `openai/...`)."""

EXAMPLES = "e.g. openai/gpt-4o-2024-08-06 or azure/<deployment>"


@dataclass(frozen=True)
class ModelRef:
    """A parsed model string."""

    provider: str
    name: str
    """The model id (OpenAI), deployment name (Azure), or the provider's own model name."""

    def __str__(self) -> str:
        return f"{self.provider}/{self.name}"


def parse_model(spec: str, providers: Collection[str] | None = None) -> ModelRef:
    """Split `spec` at the first slash; one clear error for a malformed string or unknown provider."""
    provider, sep, name = spec.partition("/")
    if not (sep and provider and name.strip()) or any(c.isspace() for c in spec):
        raise UserError(f"--model {spec!r}: write PROVIDER/MODEL, {EXAMPLES}")
    if providers is not None and provider not in providers:
        raise UserError(
            f"--model {spec!r}: provider {provider!r} is not one of {', '.join(providers)} here ({EXAMPLES})"
        )
    return ModelRef(provider, name)


def is_fine_tuned_name(name: str) -> bool:
    """A model id that says it is fine-tuned: OpenAI's `ft:...` and Azure's `<base>.ft-<hex>`.

    An Azure deployment has whatever name its owner chose, so this is only a fallback: a
    deployment made by `deploy` is known as fine-tuned from its fine-tune record.
    """
    return name.startswith("ft:") or ".ft-" in name
