"""Providers by their `PROVIDER/` prefix, each imported only when an arm of it runs.

`openai/` and `azure/` speak the OpenAI API (any compatible server is `openai/`); `clip/`,
`cnn/` and `hf/` run here, with torch. A provider whose packages are missing is one line saying what to
install, before any work starts.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from ..errors import UserError
from ..models import ModelRef, parse_model

Kind = Literal["remote", "local"]


@dataclass(frozen=True)
class Provider:
    """One `PROVIDER/` prefix: where its code is and what it needs."""

    name: str
    kind: Kind
    """`remote`: one request per item over the network; `local`: batches on this machine."""
    module: str
    """The module that implements it, imported on first use."""
    needs: tuple[str, ...] = ()
    """Top-level packages it imports (checked before importing it)."""
    extra: str | None = None
    """The pip extra that installs them."""
    example: str = ""

    def load(self) -> ModuleType:
        """The provider's module; a missing package is one line naming the extra to install."""
        missing = [p for p in self.needs if importlib.util.find_spec(p) is None]
        if missing:
            raise UserError(
                f"{self.name}/ models need {', '.join(missing)}: install the {self.extra!r} "
                f"extra, pip install 'vlm-classify[{self.extra}]'"
            )
        return importlib.import_module(self.module)


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "openai",
            "remote",
            "vlm_classify.backends.openai.chat",
            example="openai/gpt-4o-2024-08-06",
        ),
        Provider(
            "azure", "remote", "vlm_classify.backends.openai.chat", example="azure/<deployment>"
        ),
        Provider(
            "clip",
            "local",
            "vlm_classify.backends.local.clip",
            needs=("torch", "open_clip"),
            extra="local",
            example="clip/ViT-B-32@laion2b_s34b_b79k",
        ),
        Provider(
            "cnn",
            "local",
            "vlm_classify.backends.local.cnn",
            needs=("torch", "timm"),
            extra="local",
            example="cnn/mobilenetv3_small_100",
        ),
        Provider(
            "hf",
            "local",
            "vlm_classify.backends.local.hf_vlm",
            needs=("torch", "transformers", "peft"),
            extra="local",
            example="hf/Qwen/Qwen2-VL-2B-Instruct",
        ),
    )
}


def parse(spec: str) -> tuple[ModelRef, Provider]:
    """A model string and its provider; an unknown provider is one line listing the known ones."""
    ref = parse_model(spec, PROVIDERS)
    return ref, PROVIDERS[ref.provider]


__all__ = ["PROVIDERS", "Kind", "Provider", "parse"]
