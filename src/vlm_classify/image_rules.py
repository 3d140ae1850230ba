"""How a model turns an image into input tokens: the tile rule and the patch rule, as data and
pure functions.

Two kinds, both from OpenAI's "Images and vision" guide, "Calculating costs"
(https://developers.openai.com/api/docs/guides/images-vision#calculating-costs):

- `tile` (gpt-4o, gpt-4o-mini, gpt-4.1, gpt-5, gpt-5.1): `detail: low` costs a fixed count; `high`
  (and `auto`) fits the image in 2048 x 2048, shrinks its short side to 768, and costs base +
  tile tokens per 512 px tile.
- `patch` (gpt-4.1-mini/nano, gpt-5-mini/nano, gpt-5.2, gpt-5.4 family, gpt-5.5): the image is
  covered by 32 px patches, shrunk to fit a patch budget, and the patch count times a per-model
  multiplier, rounded up, is billed. `detail` chooses a sizing per model; for several models it
  changes nothing.

The price table (`pricing.py`, `data/pricing.json`) says which rule, with which constants, each
model uses; `backends/openai/tokens.image_tokens` is the one entry point everybody calls.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from .backends.openai.wire import DETAILS, Detail

VISION_GUIDE = "https://developers.openai.com/api/docs/guides/images-vision#calculating-costs"

_EPS = 1e-6
"""Float noise tolerance: 1056 computed as 1055.9999999 is still 1056 pixels."""


class TileRule(BaseModel):
    """gpt-4o style: a fixed count at `detail: low`, base + tiles at `high` / `auto`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tile"] = "tile"
    low_tokens: int = Field(default=85, ge=0)
    """Tokens of any image sent with `detail: low`."""
    base_tokens: int = Field(default=85, ge=0)
    """Tokens always added for a `detail: high` image."""
    tile_tokens: int = Field(default=170, ge=0)
    """Tokens per tile of a `detail: high` image."""
    tile_px: int = Field(default=512, gt=0)
    """Tile side in pixels."""
    max_px: int = Field(default=2048, gt=0)
    """First the image is scaled down to fit a max_px x max_px square."""
    short_side_px: int = Field(default=768, gt=0)
    """Then scaled down so its shortest side is at most this."""
    source: str = ""
    """Where the constants come from (a URL)."""
    disagreements: list[str] = Field(default_factory=list)
    """Where sources disagree about this model's rule, one sentence each with its source."""


class PatchSizing(BaseModel):
    """How a patch-rule model sizes an image at one detail level, before counting patches."""

    model_config = ConfigDict(extra="forbid")

    max_px: int | None = Field(default=None, gt=0)
    """The image is first fitted within max_px x max_px (aspect kept, integer pixels, never
    enlarged); None: no pixel limit is documented."""
    max_patches: int | None = Field(default=None, gt=0)
    """The patch budget: an image needing more patches is shrunk to fit it; None: no budget."""


class PatchRule(BaseModel):
    """gpt-4.1-mini style: 32 px patches, a patch budget, a per-model multiplier."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["patch"] = "patch"
    patch_px: int = Field(default=32, gt=0)
    """Patch side in pixels."""
    multiplier: float = Field(gt=0, allow_inf_nan=False)
    """Billed tokens = ceil(patches x multiplier)."""
    high: PatchSizing
    """Sizing at `detail: high`."""
    low: PatchSizing | None = None
    """Sizing at `detail: low`; None: the same as `high` (`detail: low` changes nothing)."""
    auto: PatchSizing | None = None
    """Sizing at `detail: auto` (and when `detail` is left out); None: the same as `high`."""
    source: str = ""
    """Where the rule and its constants come from (a URL)."""
    disagreements: list[str] = Field(default_factory=list)
    """Where sources disagree about this model's rule, one sentence each with its source."""

    def sizing(self, detail: Detail) -> PatchSizing:
        """The sizing `detail` selects."""
        if detail == "low":
            return self.low or self.high
        if detail == "auto":
            return self.auto or self.high
        return self.high


def _rule_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "tile"))  # entries written before the patch rule: tiles
    return str(getattr(value, "kind", "tile"))


VisionRule = Annotated[
    Annotated[TileRule, Tag("tile")] | Annotated[PatchRule, Tag("patch")],
    Discriminator(_rule_kind),
]
"""A model's image-token rule: `{"kind": "tile", ...}` (the default) or `{"kind": "patch", ...}`."""

GPT4O_VISION = TileRule(source=VISION_GUIDE)
"""gpt-4o: 85 at `detail: low`; 85 + 170 per 512 px tile at `high`."""


def _check(width: int, height: int, detail: str) -> None:
    if detail not in DETAILS:
        raise ValueError(f"unknown detail {detail!r}; choose one of {', '.join(DETAILS)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")


def tile_tokens(width: int, height: int, detail: Detail, rule: TileRule) -> int:
    """Input tokens of one image under a tile rule.

    `low`: the fixed count. `high` and `auto` (the guide: "With detail high or auto"): scale down
    (never up) to fit max_px x max_px, then down so the shortest side is at most short_side_px,
    count tile_px tiles: base + tile x tiles.
    """
    if detail not in DETAILS:
        raise ValueError(f"unknown detail {detail!r}; choose one of {', '.join(DETAILS)}")
    if detail == "low":
        return rule.low_tokens
    _check(width, height, detail)
    w, h = float(width), float(height)
    if max(w, h) > rule.max_px:
        scale = rule.max_px / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > rule.short_side_px:
        scale = rule.short_side_px / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(round(w, 6) / rule.tile_px) * math.ceil(round(h, 6) / rule.tile_px)
    return rule.base_tokens + rule.tile_tokens * tiles


def _floor(x: float) -> int:
    return math.floor(x + _EPS)


def patch_grid(
    width: int, height: int, sizing: PatchSizing, patch_px: int = 32
) -> tuple[int, int, int]:
    """`(resized width, resized height, patches)` of an image under one patch sizing.

    The guide's steps: fit within max_px x max_px (aspect kept, integer pixels, never enlarged);
    A: patches = ceil(w/32) x ceil(h/32); B: over the budget, shrink by
    sqrt(32^2 x budget / (w x h)), then by min(floor(w'/32)/(w'/32), floor(h'/32)/(h'/32)) so
    one side fits a whole number of patches; C: round the final size down to integer pixels
    and count its patches (never more than the budget).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    w, h = width, height
    if sizing.max_px is not None and max(w, h) > sizing.max_px:
        scale = sizing.max_px / max(w, h)
        # "rounding to integer pixels": to the nearest, at least 1 (the long side is exact).
        w, h = max(1, math.floor(w * scale + 0.5)), max(1, math.floor(h * scale + 0.5))
    p = patch_px
    patches = math.ceil(w / p) * math.ceil(h / p)
    budget = sizing.max_patches
    if budget is None or patches <= budget:
        return w, h, patches
    shrink = math.sqrt(p * p * budget / (w * h))
    cols, rows = w * shrink / p, h * shrink / p
    adjusted = shrink * min(_floor(cols) / cols, _floor(rows) / rows)
    w, h = max(1, _floor(w * adjusted)), max(1, _floor(h * adjusted))
    return w, h, min(budget, math.ceil(w / p) * math.ceil(h / p))


def multiplied(patches: int, multiplier: float) -> int:
    """Billed tokens of `patches` patches: the guide's step D, "multiply ... and round up"."""
    return math.ceil(round(patches * multiplier, 6))


def patch_tokens(width: int, height: int, detail: Detail, rule: PatchRule) -> int:
    """Input tokens of one image under a patch rule: the patches of the sizing `detail`
    selects, times the model's multiplier, rounded up."""
    _check(width, height, detail)
    _, _, patches = patch_grid(width, height, rule.sizing(detail), rule.patch_px)
    return multiplied(patches, rule.multiplier)


def rule_tokens(width: int, height: int, detail: Detail, rule: TileRule | PatchRule) -> int:
    """Input tokens of one `width` x `height` image at `detail` under `rule` (either kind)."""
    if isinstance(rule, PatchRule):
        return patch_tokens(width, height, detail, rule)
    return tile_tokens(width, height, detail, rule)


def _sizing_text(s: PatchSizing) -> str:
    parts = []
    if s.max_px is not None:
        parts.append(f"fit {s.max_px} px")
    parts.append(f"budget {s.max_patches:,} patches" if s.max_patches else "no patch budget")
    return ", ".join(parts)


def describe(rule: TileRule | PatchRule, detail: Detail) -> str:
    """One line saying which rule counts an image at `detail`, for an estimate's notes."""
    if isinstance(rule, TileRule):
        if detail == "low":
            text = f"tile rule, detail=low: a fixed {rule.low_tokens} tokens per image"
        else:
            text = (
                f"tile rule, detail={detail}: {rule.base_tokens} + {rule.tile_tokens} per "
                f"{rule.tile_px} px tile, after fitting {rule.max_px} px and a short side of "
                f"{rule.short_side_px} px, from each image's size in the manifest"
            )
            if detail == "auto":
                text += " (auto is sized as high)"
    else:
        sizing = rule.sizing(detail)
        text = (
            f"patch rule, detail={detail}: {rule.patch_px} px patches ({_sizing_text(sizing)}) "
            f"x {rule.multiplier:g}, rounded up, from each image's size in the manifest"
        )
        if detail != "high" and sizing == rule.high:
            text += f"; detail={detail} is sized as high for this model"
    if rule.source:
        text += f" (source: {rule.source})"
    return text
