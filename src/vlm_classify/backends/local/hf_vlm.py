"""`hf/`: open generative vision-language models run here through transformers, zero-shot by
label scoring (or free generation) and LoRA-fine-tuned with peft.

`hf/Qwen/Qwen2-VL-2B-Instruct` (a hub id), `hf/PATH` (a model folder, or a LoRA adapter folder
whose config names its base) and `hf/arm:NAME` (the adapter `finetune` trained into arm NAME)
are what `classify` runs; `finetune` trains a LoRA adapter on a base model. What the names mean,
the prompt and the scoring are `hf_model`'s; the training loop is `hf_train`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...dataset.manifest import ManifestRow
from ...errors import UserError
from ...models import ModelRef
from ...prompts import PromptStyle, parse_answer
from ...training import TrainOptions
from ..base import LocalSettings, Prediction, Usage, prediction_from_scores
from . import common
from .hf_model import Chat, LabelScorer, Loaded, load, open_image, parse_source, versions


def resolve_device(name: str) -> torch.device:
    """`common.resolve_device`, a bare `cuda` pinned to the current GPU."""
    device = common.resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def default_prompt(ref: ModelRef, prepared_dir: Path) -> PromptStyle:
    """The prompt style `ref` is asked with when none is given: the one a trained adapter was
    trained with, else `full` (the study's)."""
    card = parse_source(ref, Path(prepared_dir)).card
    return card.prompt if card is not None else "full"


def make_backend(
    ref: ModelRef, labels: list[str], prepared_dir: Path, settings: LocalSettings
) -> HfBackend:
    """The model `ref` names, ready to classify `prepared_dir`'s images."""
    source = parse_source(ref, Path(prepared_dir))
    card = source.card
    if card is not None and card.labels != list(labels):
        raise UserError(
            f"{ref} was trained on other labels than {prepared_dir}'s: train it again on this "
            "sample"
        )
    device = resolve_device(settings.device)
    loaded = load(source, str(ref), device, common.offline(settings.offline))
    style = settings.prompt or (card.prompt if card is not None else "full")
    chat = Chat(loaded.processor, labels, style)
    return HfBackend(str(ref), loaded, chat, Path(prepared_dir), settings)


class HfBackend:
    """An open VLM: label scoring (a distribution over the labels for every image) or free
    generation parsed like a cloud model's answer."""

    def __init__(
        self, name: str, loaded: Loaded, chat: Chat, root: Path, settings: LocalSettings
    ) -> None:
        self.name = name
        self.device = str(loaded.device)
        self._loaded: Loaded | None = loaded
        self._chat = chat
        self._root = root
        self._settings = settings
        self._labels = chat.labels
        self._scorer = (
            LabelScorer(loaded, chat, settings.label_batch) if settings.answer == "score" else None
        )

    def classify_batch(self, items: Sequence[ManifestRow]) -> list[Prediction]:
        if self._loaded is None:
            raise RuntimeError(f"{self.name} is closed")
        if self._scorer is not None:
            return [self._score(item) for item in items]
        return self._generate(items)

    def _score(self, item: ManifestRow) -> Prediction:
        assert self._scorer is not None
        sums, means = self._scorer.score(open_image(self._root, item))
        probs = torch.softmax(sums, dim=0)
        best = prediction_from_scores(self._labels, probs.tolist())
        mean_best = self._labels[int(torch.argmax(means))]
        raw = {
            "label": best.prediction,
            "logprob": round(float(sums.max()), 4),
            "length_normalised": mean_best,
        }
        return Prediction(
            prediction=best.prediction,
            raw_answer=json.dumps(raw, ensure_ascii=False),
            valid=True,
            confidence=best.confidence,
            scores=best.scores,
            usage=Usage(prompt_tokens=self._scorer.prompt_tokens),
        )

    @torch.inference_mode()
    def _generate(self, items: Sequence[ManifestRow]) -> list[Prediction]:
        assert self._loaded is not None
        model, device = self._loaded.model, self._loaded.device
        tokenizer = self._chat.tokenizer
        tokenizer.padding_side = "left"  # generation continues every row from its last token
        out: list[Prediction] = []
        step = max(1, self._settings.batch_size)
        for i in range(0, len(items), step):
            batch = items[i : i + step]
            images = [open_image(self._root, r) for r in batch]
            enc = self._chat.encode([self._chat.prefix] * len(batch), images).to(device)
            width = int(enc["input_ids"].shape[1])
            with common.autocast(device):
                generated = model.generate(
                    **enc,
                    max_new_tokens=self._settings.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = generated[:, width:].cpu()
            prompts = enc["attention_mask"].sum(dim=1).tolist()
            for tokens, prompt in zip(new, prompts, strict=True):
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                used = _completion_tokens(tokens.tolist(), tokenizer)
                label = parse_answer(text, self._labels)
                out.append(
                    Prediction(
                        prediction=label,
                        raw_answer=text,
                        valid=label is not None,
                        usage=Usage(prompt_tokens=int(prompt), completion_tokens=used),
                    )
                )
        return out

    def details(self) -> dict[str, Any]:
        """How the answers were obtained: recorded in arm.json."""
        chat = self._chat
        out: dict[str, Any] = {
            "answer": self._settings.answer,
            "prompt": chat.style,
            "system_role": chat.system_role,
            "end_of_turn": chat.end,
        }
        if self._loaded is not None:
            source = self._loaded.source
            out["base_model"] = source.base
            out["adapter"] = str(source.adapter) if source.adapter else None
            out["dtype"] = str(self._loaded.dtype).removeprefix("torch.")
        if self._scorer is not None:
            tokens = self._scorer.tokens
            out["scoring"] = {
                "distribution": "softmax of each label's summed token log-probabilities",
                "length_normalised": "raw_answer's length_normalised: the best mean per token",
                "label_tokens_mean": round(sum(map(len, tokens.ids)) / len(tokens.ids), 2),
                "labels_tokenised_with_prompt": tokens.joint,
                "labels_merging_with_prompt": tokens.merged,
                "labels_per_pass": self._scorer.batch,
                "packed": self._scorer.packed,
                "packed_check": self._scorer.packed_check,
            }
        else:
            out["max_new_tokens"] = self._settings.max_new_tokens
        return out

    def gpu_peak_mb(self) -> float | None:
        return common.gpu_peak_mb(torch.device(self.device))

    def versions(self) -> dict[str, str]:
        return versions()

    def close(self) -> None:
        self._loaded = None
        self._scorer = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _completion_tokens(tokens: list[int], tokenizer: Any) -> int:
    """Generated tokens up to and including the first end token (the rest is padding)."""
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    for i, t in enumerate(tokens):
        if t in ends:
            return i + 1
    return len(tokens)


def make_trainer(
    ref: ModelRef, labels: list[str], prepared_dir: Path, options: TrainOptions
) -> Any:
    """A LoRA trainer of base model `ref` on the prepared sample's labels."""
    from .hf_train import LoraTrainer

    source = parse_source(ref, Path(prepared_dir))
    if source.adapter is not None:
        raise UserError(
            f"{ref} is a LoRA adapter: finetune starts from a base model, e.g. "
            "hf/Qwen/Qwen2-VL-2B-Instruct or a model folder"
        )
    return LoraTrainer(str(ref), source, list(labels), Path(prepared_dir), options)


__all__ = ["HfBackend", "make_backend", "make_trainer"]
