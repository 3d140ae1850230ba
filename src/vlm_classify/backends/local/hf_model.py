"""What an `hf/` model is: an open generative vision-language model (Qwen2-VL, Qwen2.5-VL,
SmolVLM, Idefics3, LLaVA-class...) loaded through transformers' Auto classes, the prompt it is
asked, and how every label is scored against one image.

`hf/MODEL` names a hub id (`hf/Qwen/Qwen2-VL-2B-Instruct`), a local model folder, a LoRA adapter
folder (its base comes from the adapter's config), or `hf/arm:NAME`, the adapter a `finetune`
trained into arm NAME. The backend (`hf_vlm`) and the trainer (`hf_train`) build on this module.

**Label scoring.** The image and the prompt (the prefix) go through the model once; every label,
followed by the chat template's end-of-turn marker (so `Golden` and `Golden Retriever` are told
apart), is then scored from the prefix's key/value cache, many labels per forward pass. A label's
score is the sum of its tokens' log-probabilities; the distribution over the labels is their
softmax. The mean per token (length-normalised) is computed alongside and recorded.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel

from ...dataset.manifest import ManifestRow
from ...errors import UserError
from ...models import ModelRef
from ...prompts import PromptStyle, system_prompt
from ...training import Epoch, resolve_arm_model
from . import common

log = logging.getLogger(__name__)

FORMAT = "vlm-classify/hf-lora/1"
CARD = "vlm.json"
"""Written last into a trained adapter's folder: its presence means the training finished."""
ADAPTER_CONFIG = "adapter_config.json"
SENTINEL = "QZXJV"
"""A stand-in answer used to find where the chat template puts the assistant's text."""


class Card(BaseModel):
    """`vlm.json`: what a LoRA adapter trained here needs to run and to be described."""

    format: str = FORMAT
    base_model: str
    """The base the adapter was trained on: a hub id or a folder, as `hf/` named it."""
    labels: list[str]
    prompt: PromptStyle
    """The prompt style it was trained with (and is asked with)."""
    lora: dict[str, Any]
    best_epoch: int
    best_val_accuracy: float | None
    fingerprint: dict[str, Any]
    curves: list[Epoch]
    details: dict[str, Any]


@dataclass(frozen=True)
class Source:
    """Where an `hf/` model's weights come from."""

    base: str
    """A hub id or a local folder: the model the Auto classes load."""
    adapter: Path | None = None
    """A LoRA adapter to put on it (a folder with `adapter_config.json`)."""
    card: Card | None = None
    """The adapter's card when this tool trained it."""

    @property
    def is_local(self) -> bool:
        return Path(self.base).expanduser().is_dir()


def parse_source(ref: ModelRef, prepared_dir: Path) -> Source:
    """The base model (and adapter) an `hf/` name stands for; a malformed one is one line."""
    spec = str(ref)
    arm = resolve_arm_model(ref.name, prepared_dir)
    path = arm if arm is not None else Path(ref.name).expanduser()
    if arm is not None or path.is_dir():
        if (path / ADAPTER_CONFIG).is_file():
            card = read_card(path, spec) if (arm is not None or (path / CARD).is_file()) else None
            base = card.base_model if card else _adapter_base(path, spec)
            return Source(base=base, adapter=path, card=card)
        if arm is not None:
            if (path / CHECKPOINT_DIR).is_dir():
                raise UserError(
                    f"{spec}: its training did not finish ({path} holds a checkpoint only): "
                    "rerun the same `vlm-classify finetune` command to resume it"
                )
            raise UserError(f"{spec}: {path} holds no LoRA adapter ({ADAPTER_CONFIG})")
        if not (path / "config.json").is_file():
            raise UserError(
                f"{spec}: {path} is a folder without config.json: give a transformers model "
                "folder (save_pretrained's output), a LoRA adapter folder, or a hub id"
            )
        return Source(base=str(path))
    parts = ref.name.split("/")
    if len(parts) != 2 or not all(parts) or ref.name.startswith((".", "~")):
        raise UserError(
            f"{spec}: no such folder, and not a hub id (OWNER/NAME, e.g. "
            "hf/Qwen/Qwen2-VL-2B-Instruct)"
        )
    return Source(base=ref.name)


CHECKPOINT_DIR = "checkpoint"
"""Inside a model folder while it trains (see `hf_train`)."""


def _adapter_base(path: Path, spec: str) -> str:
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = config["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        base = None
    if not isinstance(base, str) or not base:
        raise UserError(
            f"{spec}: {path / ADAPTER_CONFIG} names no base model (base_model_name_or_path)"
        )
    return base


def read_card(path: Path, spec: str) -> Card:
    """The card of an adapter trained here; anything else is one line."""
    file = path / CARD
    if not file.is_file():
        raise UserError(
            f"{spec}: its training did not finish ({path} has no {CARD}): rerun the same "
            "`vlm-classify finetune` command to resume it"
        )
    try:
        card = Card.model_validate_json(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{spec}: {file} is unreadable ({str(e).splitlines()[0]})") from None
    if card.format != FORMAT:
        raise UserError(f"{spec}: {file} is format {card.format!r}, not {FORMAT!r}: train again")
    return card


# --- loading -----------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A model and its processor, on a device."""

    model: Any
    processor: Any
    device: torch.device
    source: Source
    dtype: torch.dtype = torch.float32


def model_dtype(device: torch.device) -> torch.dtype:
    """bf16 weights on a GPU that has it (fp16 otherwise), fp32 on the CPU and MPS."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load(
    source: Source, spec: str, device: torch.device, offline: bool, adapter: bool = True
) -> Loaded:
    """The base model through `AutoModelForImageTextToText` and its `AutoProcessor` (plus the
    adapter when `adapter`), from local files only when `offline`."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{spec} needs transformers: pip install 'vlm-classify[local]'") from None
    from huggingface_hub.errors import HFValidationError

    transformers.utils.logging.disable_progress_bar()  # our bar shows the work; --debug logs
    dtype = model_dtype(device)
    fetch = f"hf download {source.base}" if not source.is_local else ""
    errors = (OSError, ValueError, KeyError, HFValidationError)
    with common.hub_offline(offline):
        try:
            processor = transformers.AutoProcessor.from_pretrained(
                source.base, local_files_only=offline
            )
            model: Any = transformers.AutoModelForImageTextToText.from_pretrained(
                source.base,
                local_files_only=offline,
                dtype=dtype,
                device_map=str(device) if device.type == "cuda" else None,  # straight to the GPU
            )
        except errors as e:
            raise common.load_error(spec, e, offline, fetch) from e
    if not hasattr(processor, "tokenizer") or processor.tokenizer is None:
        raise UserError(f"{spec}: its processor has no tokenizer; is it a vision-language model?")
    if source.adapter is not None and adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(source.adapter))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise common.load_error(spec, e, offline, "") from e
    model.to(device)
    model.eval()
    return Loaded(model, processor, device, source, dtype)


# --- the prompt --------------------------------------------------------------------------------


class Chat:
    """The conversation an image is classified in, as this model's chat template writes it."""

    def __init__(self, processor: Any, labels: Sequence[str], style: PromptStyle) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.labels = list(labels)
        self.style = style
        self.instruction = system_prompt(self.labels, style)
        self.messages, self.system_role = self._messages()
        self.prefix = self._render(self.messages, generation=True)
        self.end = self._end_of_turn()

    def _messages(self) -> tuple[list[dict[str, Any]], bool]:
        with_system = [
            {"role": "system", "content": [{"type": "text", "text": self.instruction}]},
            {"role": "user", "content": [{"type": "image"}]},
        ]
        try:
            self._render(with_system, generation=True)
            return with_system, True
        except Exception:  # templates without a system role raise (jinja's raise_exception)
            user = [{"type": "image"}, {"type": "text", "text": self.instruction}]
            return [{"role": "user", "content": user}], False

    def _render(self, messages: list[dict[str, Any]], generation: bool) -> str:
        template = getattr(self.processor, "chat_template", None)
        target = self.processor if template else self.tokenizer
        if not (template or getattr(self.tokenizer, "chat_template", None)):
            raise UserError(
                "the model has no chat template (processor or tokenizer): it is not an "
                "instruction-tuned VLM, or its folder lacks chat_template.jinja"
            )
        text = target.apply_chat_template(
            messages, add_generation_prompt=generation, tokenize=False
        )
        return str(text)

    def _end_of_turn(self) -> str:
        """What the template writes after an assistant's answer (`<|im_end|>` for ChatML),
        without trailing whitespace; the tokenizer's EOS when that cannot be found."""
        answered = [*self.messages, {"role": "assistant", "content": self.assistant(SENTINEL)}]
        try:
            full = self._render(answered, generation=False)
        except Exception:
            full = ""
        if full.startswith(self.prefix) and SENTINEL in full[len(self.prefix) :]:
            end = full[len(self.prefix) :].split(SENTINEL, 1)[1].rstrip()
            if end:
                return end
        eos = self.tokenizer.eos_token
        if not eos:
            raise UserError("the model's tokenizer has no end-of-sequence token to end a label")
        return str(eos)

    @staticmethod
    def assistant(text: str) -> list[dict[str, str]]:
        return [{"type": "text", "text": text}]

    def encode(self, texts: Sequence[str], images: Sequence[Image.Image]) -> Any:
        """The processor's tensors for texts that each hold one image."""
        try:
            return self.processor(
                text=list(texts), images=list(images), return_tensors="pt", padding=True
            )
        except (ValueError, TypeError):  # Idefics-style processors take one list per text
            return self.processor(
                text=list(texts), images=[[im] for im in images], return_tensors="pt", padding=True
            )


@dataclass
class LabelTokens:
    """Each label's tokens (followed by the end of turn) as they follow the prompt."""

    ids: list[list[int]]
    joint: int
    """Labels whose tokens had to be taken from prefix + label tokenised together (tokenising
    them alone gives other tokens at the boundary)."""
    merged: list[str] = field(default_factory=list)
    """Labels whose first token merges with the prompt's last: scored as tokenised alone."""


def label_tokens(chat: Chat) -> LabelTokens:
    """Tokenise every label after the prompt, checking that the prompt's tokens stay the same
    when the label follows it (the scores are of exactly the tokens the model would read)."""
    tok = chat.tokenizer
    prefix = tok(chat.prefix, add_special_tokens=False)["input_ids"]
    out: list[list[int]] = []
    joint = 0
    merged: list[str] = []
    for label in chat.labels:
        alone = tok(label + chat.end, add_special_tokens=False)["input_ids"]
        together = tok(chat.prefix + label + chat.end, add_special_tokens=False)["input_ids"]
        if together[: len(prefix)] == prefix:
            ids = together[len(prefix) :]
            joint += ids != alone
        else:
            ids = alone
            merged.append(label)
        if len(ids) < 2:
            raise UserError(f"label {label!r} tokenises to {len(ids)} token(s) with its end marker")
        out.append(list(ids))
    return LabelTokens(out, joint, merged)


# --- scoring -----------------------------------------------------------------------------------

PACKED_TOLERANCE = 0.05
"""Largest difference (nats a token) allowed between packed and row-per-label scores on the first
chunk: float32 agrees to about 1e-5, bf16 to a few hundredths; a model that ignores the 4D mask
is off by whole nats."""


def _cache_argument(model: Any) -> str:
    """transformers 5 calls the key/value cache `cache` (`past_key_values` before)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _rope_holder(model: Any) -> Any:
    """The module keeping multimodal RoPE's `rope_deltas` (Qwen2-VL family), if any."""
    return next((m for m in model.modules() if hasattr(m, "rope_deltas")), None)


class LabelScorer:
    """Scores every label against one image: one pass over the prefix, then the labels from its
    key/value cache, `batch` labels per pass: packed in one row with a 4D attention mask where
    the model takes one (the cache is read, not copied per label), else one row per label."""

    def __init__(self, loaded: Loaded, chat: Chat, batch: int, packed: bool = True) -> None:
        self.loaded = loaded
        self.chat = chat
        self.batch = max(1, batch)
        self.tokens = label_tokens(chat)
        self._cache_arg = _cache_argument(loaded.model)
        self._rope = _rope_holder(loaded.model)
        self.prompt_tokens = 0
        """Prompt tokens of the last image scored (its image tokens included)."""
        self.packed = packed
        """Score a chunk's labels packed in one row (see `_packed`); off after a model refuses
        a 4D attention mask or does not honour it, or when asked."""
        self.packed_check: str | None = None
        """How the packed scores compared with one row per label on the first chunk scored."""

    @torch.inference_mode()
    def score(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed and mean log-probability of each label (float64, label order)."""
        model, device = self.loaded.model, self.loaded.device
        enc = self.chat.encode([self.chat.prefix], [image]).to(device)
        prefix_len = int(enc["input_ids"].shape[1])
        self.prompt_tokens = prefix_len
        with common.autocast(device):
            out = model(**enc, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        first = out.logits[0, -1].float().log_softmax(-1)
        deltas = getattr(self._rope, "rope_deltas", None) if self._rope is not None else None
        sums: list[float] = []
        means: list[float] = []
        for chunk in _chunks(self.tokens.ids, self.batch):
            s = self._score_chunk(chunk, cache, first, prefix_len, deltas)
            sums.extend(s.sum(-1).tolist())
            means.extend((s.sum(-1) / torch.tensor([len(c) for c in chunk])).tolist())
        return torch.tensor(sums, dtype=torch.float64), torch.tensor(means, dtype=torch.float64)

    def _score_chunk(
        self,
        chunk: list[list[int]],
        cache: Any,
        first: torch.Tensor,
        prefix_len: int,
        deltas: torch.Tensor | None,
    ) -> torch.Tensor:
        """Log-probabilities of each label's tokens (padded with 0), shape (labels, tokens)."""
        n, width = len(chunk), max(map(len, chunk))
        pad = self.chat.tokenizer.pad_token_id or 0
        targets = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, ids in enumerate(chunk):
            targets[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        logp = torch.zeros((n, width), dtype=torch.float32)
        logp[:, 0] = first.cpu()[targets[:, 0]]
        if width > 1:  # the last token is only predicted, never fed
            if self.packed:
                try:
                    logp[:, 1:] = self._packed(chunk, targets, cache, prefix_len, deltas)
                except (RuntimeError, ValueError, TypeError) as e:  # no 4D masks: one row each
                    log.info("packed label scoring failed (%s): one row per label", e)
                    self.packed = False
                    self.packed_check = f"refused: {type(e).__name__}"
            if self.packed and self.packed_check is None:  # once: the mask must be honoured
                rows = self._rows(targets, mask, cache, prefix_len, deltas)
                gap = float(((logp[:, 1:] - rows) * mask[:, 1:]).abs().max())
                self.packed = gap <= PACKED_TOLERANCE
                self.packed_check = f"max difference {gap:.2g} from one row per label"
                if not self.packed:
                    log.warning("packed label scores differ (%.3g): one row per label", gap)
                    logp[:, 1:] = rows
            elif not self.packed:
                logp[:, 1:] = self._rows(targets, mask, cache, prefix_len, deltas)
        return (logp * mask).double()

    def _positions(self, offsets: torch.Tensor, deltas: torch.Tensor | None) -> torch.Tensor:
        """Text positions after the prefix; multimodal RoPE (3 axes) continues from its delta."""
        positions = offsets.to(self.loaded.device)
        if deltas is None:
            return positions
        return positions.unsqueeze(0).expand(3, *positions.shape) + deltas.to(
            self.loaded.device
        ).view(1, -1, 1)

    def _packed(
        self,
        chunk: list[list[int]],
        targets: torch.Tensor,
        cache: Any,
        prefix_len: int,
        deltas: torch.Tensor | None,
    ) -> torch.Tensor:
        """All labels of the chunk in one row after the prefix, each seeing the prefix and its
        own earlier tokens only (a 4D attention mask): the prefix's cache is read once, never
        copied per label. Log-probabilities of tokens 1.. of each label, shape (labels, w-1)."""
        model, device = self.loaded.model, self.loaded.device
        owner = torch.cat([torch.full((len(ids) - 1,), i) for i, ids in enumerate(chunk)])
        step = torch.cat([torch.arange(len(ids) - 1) for ids in chunk])
        feed = torch.cat([torch.tensor(ids[:-1]) for ids in chunk]).view(1, -1)
        q = feed.shape[1]
        allowed = torch.ones((q, prefix_len + q), dtype=torch.bool)
        allowed[:, prefix_len:] = (owner[:, None] == owner[None, :]) & (
            step[None, :] <= step[:, None]
        )
        dtype = self.loaded.dtype
        attention = torch.zeros(allowed.shape, dtype=dtype).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
        extended = copy.deepcopy(cache)  # the forward extends a cache in place
        with common.autocast(device):
            out = model(
                input_ids=feed.to(device),
                attention_mask=attention[None, None].to(device),
                position_ids=self._positions((prefix_len + step).view(1, -1), deltas),
                use_cache=True,
                **{self._cache_arg: extended},
            )
        lp = out.logits[0].float().log_softmax(-1).cpu()
        result = torch.zeros((len(chunk), targets.shape[1] - 1), dtype=torch.float32)
        nxt = targets[owner, step + 1]
        result[owner, step] = lp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        return result

    def _rows(
        self,
        targets: torch.Tensor,
        mask: torch.Tensor,
        cache: Any,
        prefix_len: int,
        deltas: torch.Tensor | None,
    ) -> torch.Tensor:
        """One row per label, the prefix's cache repeated for each (any model takes this)."""
        model, device = self.loaded.model, self.loaded.device
        n, width = targets.shape
        feed = targets[:, :-1].to(device)
        offsets = torch.arange(prefix_len, prefix_len + width - 1).view(1, -1).expand(n, -1)
        attention = torch.cat(
            [torch.ones((n, prefix_len), dtype=torch.long), mask[:, :-1]], dim=1
        ).to(device)
        extended = copy.deepcopy(cache)  # the forward extends a cache in place
        extended.batch_repeat_interleave(n)
        with common.autocast(device):
            out = model(
                input_ids=feed,
                attention_mask=attention,
                position_ids=self._positions(offsets, deltas),
                use_cache=True,
                **{self._cache_arg: extended},
            )
        lp = out.logits.float().log_softmax(-1).cpu()
        return lp.gather(-1, targets[:, 1:].unsqueeze(-1)).squeeze(-1)

    @torch.inference_mode()
    def score_full(self, image: Image.Image) -> torch.Tensor:
        """Summed log-probability of each label, one full forward per label (no cache): the
        slow reference the cached scores are checked and benchmarked against."""
        model, device = self.loaded.model, self.loaded.device
        out: list[float] = []
        prefix_len = None
        for ids in self.tokens.ids:
            enc = self.chat.encode([self.chat.prefix], [image])
            if prefix_len is None:
                prefix_len = int(enc["input_ids"].shape[1])
            enc["input_ids"] = torch.cat([enc["input_ids"], torch.tensor([ids])], dim=1)
            enc["attention_mask"] = torch.ones_like(enc["input_ids"])
            if "mm_token_type_ids" in enc:
                pad = torch.zeros((1, len(ids)), dtype=enc["mm_token_type_ids"].dtype)
                enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], pad], dim=1)
            if self._rope is not None:
                self._rope.rope_deltas = None
            with common.autocast(device):
                logits = model(**enc.to(device)).logits[0].float().log_softmax(-1).cpu()
            out.append(sum(float(logits[prefix_len - 1 + j, t]) for j, t in enumerate(ids)))
        return torch.tensor(out, dtype=torch.float64)


def _chunks(items: list[list[int]], size: int) -> Iterator[list[list[int]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def open_image(root: Path, row: ManifestRow) -> Image.Image:
    """A prepared image as RGB; an unreadable one is one line naming the fix."""
    try:
        with Image.open(root / row.image_path) as img:
            return img.convert("RGB")
    except OSError as e:
        raise UserError(
            f"cannot read {row.image_path} ({e}): rerun `vlm-classify prepare`"
        ) from None


def versions() -> dict[str, str]:
    import transformers

    out = {"transformers": transformers.__version__}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        pass
    return common.versions(**out)


__all__ = [
    "CARD",
    "Card",
    "Chat",
    "LabelScorer",
    "Loaded",
    "Source",
    "label_tokens",
    "load",
    "open_image",
    "parse_source",
    "read_card",
]
