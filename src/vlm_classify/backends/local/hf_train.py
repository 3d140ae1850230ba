"""LoRA fine-tuning of an `hf/` model with peft, in one loop written for Hugging Face accelerate.

The same code runs on the CPU, on one GPU, or over several with
`accelerate launch --num_processes N -m vlm_classify finetune ...`: every process takes its share
of each batch list, gradients are averaged by accelerate, and only the main process writes.

The loss is the answer's tokens only (the label and the end-of-turn marker, after the same prompt
the zero-shot arm is asked with); the vision tower and the base weights stay frozen. Each epoch
records the train loss, the val loss (the true label's mean token loss) and the val accuracy by
label scoring, the way `classify` will answer; the best epoch's adapter is kept. A checkpoint
(adapter, optimizer, schedule, position in the epoch) is written every `CHECKPOINT_STEPS` steps
and at each epoch's end, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...dataset.manifest import ManifestRow
from ...errors import UserError
from ...files import fsync_tree, staged_into, write_text_atomic
from ...training import Epoch, TrainOptions, TrainResult
from . import common
from .hf_model import (
    CARD,
    CHECKPOINT_DIR,
    Card,
    Chat,
    LabelScorer,
    Loaded,
    Source,
    label_tokens,
    load,
    open_image,
    read_card,
    versions,
)

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 3
DEFAULT_LR = 2e-4
"""AdamW's peak rate for the LoRA weights (the usual choice for LoRA on 2B-7B VLMs)."""
DEFAULT_BATCH_SIZE = 4
DEFAULT_RANK = 16
WARMUP = 0.05
"""Share of the steps over which the rate warms up, before its cosine decay."""
CHECKPOINT_STEPS = 50
TARGETS = r"^(?!.*(visual|vision)).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
"""LoRA on the language model's attention and MLP projections; the vision tower stays as it is."""


class LoraTrainer:
    """Trains a LoRA adapter on an `hf/` base model (see the module's docstring)."""

    def __init__(
        self,
        spec: str,
        source: Source,
        labels: list[str],
        prepared_dir: Path,
        options: TrainOptions,
    ) -> None:
        from accelerate import Accelerator

        self.spec = spec
        self.source = source
        self.labels = labels
        self.root = prepared_dir
        self.options = options
        self.epochs = options.epochs or DEFAULT_EPOCHS
        self.batch_size = options.batch_size or DEFAULT_BATCH_SIZE
        self.lr = options.lr or DEFAULT_LR
        self.rank = options.lora_rank or DEFAULT_RANK
        self.prompt = options.local.prompt or "full"
        device = common.resolve_device(options.local.device)  # a missing device is one line
        cuda = device.type == "cuda"
        bf16 = cuda and torch.cuda.is_bf16_supported()
        self.accelerator = Accelerator(
            cpu=device.type == "cpu", mixed_precision="bf16" if bf16 else "fp16" if cuda else "no"
        )
        self.device = str(self.accelerator.device)
        self.is_main_process = self.accelerator.is_main_process

    def gpu_peak_mb(self) -> float | None:
        return common.gpu_peak_mb(self.accelerator.device)

    def versions(self) -> dict[str, str]:
        import accelerate

        return versions() | {"accelerate": accelerate.__version__}

    def fingerprint(
        self, train: Sequence[ManifestRow], val: Sequence[ManifestRow]
    ) -> dict[str, Any]:
        """What defines the run: a resumed or finished run must match it."""
        return {
            "base_model": self.source.base,
            "labels": self.labels,
            "prompt": self.prompt,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "rank": self.rank,
            "seed": self.options.seed,
            "processes": self.accelerator.num_processes,
            "train": _digest(train),
            "val": _digest(val),
        }

    def fit(
        self,
        train: Sequence[ManifestRow],
        val: Sequence[ManifestRow],
        out: Path,
        on_epoch: Callable[[Epoch], None],
    ) -> TrainResult:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        acc = self.accelerator
        out = Path(out)
        world = acc.num_processes
        if len(train) < world:
            raise UserError(f"the train split has {len(train)} images for {world} processes")
        fingerprint = self.fingerprint(train, val)
        if (out / CARD).is_file():  # finished: nothing to do
            card = read_card(out, self.spec)
            _check_same(card.fingerprint, fingerprint, out)
            return _result(card.curves, card.best_epoch, card.details, world)
        state = self._load_checkpoint(out, fingerprint)
        loaded = load(
            self.source, self.spec, acc.device, common.offline(self.options.local.offline), False
        )
        chat = Chat(loaded.processor, self.labels, self.prompt)
        answers = label_tokens(chat)
        torch.manual_seed(self.options.seed)
        config = LoraConfig(
            r=self.rank,
            lora_alpha=2 * self.rank,
            lora_dropout=0.05,
            target_modules=TARGETS,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(loaded.model, config)
        if state is not None:
            set_peft_model_state_dict(
                model, load_file(str(out / CHECKPOINT_DIR / "adapter.safetensors"))
            )
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in trainable)
        if not n_trainable:
            raise UserError(f"{self.spec}: LoRA found no projection layers to adapt ({TARGETS})")
        per_process = len(train) // world
        steps_per_epoch = math.ceil(per_process / self.batch_size)
        total = steps_per_epoch * self.epochs
        optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=0.0)
        scheduler = _cosine(optimizer, max(1, round(WARMUP * total)), total)
        if state is not None:
            optimizer.load_state_dict(
                torch.load(out / CHECKPOINT_DIR / "optimizer.pt", map_location="cpu")
            )
            scheduler.load_state_dict(
                torch.load(out / CHECKPOINT_DIR / "scheduler.pt", map_location="cpu")
            )
        model, optimizer = acc.prepare(model, optimizer)
        loaded.model = model
        scorer = LabelScorer(
            Loaded(
                acc.unwrap_model(model), loaded.processor, acc.device, self.source, loaded.dtype
            ),
            chat,
            64,
        )
        curves = [Epoch.model_validate(e) for e in (state or {}).get("curves", [])]
        best = (state or {}).get("best")
        start_epoch = (state or {}).get("epoch", 1)
        done_steps = (state or {}).get("step", 0)
        loss_sum = (state or {}).get("loss_sum", 0.0)
        seconds = (state or {}).get("seconds", 0.0)
        chat.tokenizer.padding_side = "right"
        for epoch in range(start_epoch, self.epochs + 1):
            t0 = time.perf_counter()
            order = list(range(len(train)))
            random.Random(self.options.seed * 1_000_003 + epoch).shuffle(order)
            mine = order[acc.process_index :: world][:per_process]
            batches = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
            model.train()
            for step in range(done_steps, len(batches)):
                # LoRA dropout seeded per step: a resumed run repeats the uninterrupted one
                torch.manual_seed(hash((self.options.seed, epoch, step, acc.process_index)))
                rows = [train[i] for i in batches[step]]
                loss = self._loss(model, chat, answers.ids, rows)
                acc.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                loss_sum += float(acc.reduce(loss.detach(), reduction="mean"))
                if (step + 1) % CHECKPOINT_STEPS == 0 and step + 1 < len(batches):
                    elapsed = seconds + time.perf_counter() - t0
                    self._save_checkpoint(
                        out, model, optimizer, scheduler, fingerprint,
                        curves, best, epoch, step + 1, loss_sum, elapsed,
                    )  # fmt: skip
            model.eval()
            val_loss, val_acc = self._evaluate(scorer, val)
            model.train()
            seconds += time.perf_counter() - t0
            e = Epoch(
                epoch=epoch,
                train_loss=round(loss_sum / max(1, len(batches)), 6),
                val_loss=None if val_loss is None else round(val_loss, 6),
                val_accuracy=val_acc,
                seconds=round(seconds, 3),
            )
            curves.append(e)
            if acc.is_main_process:
                on_epoch(e)
            if best is None or _better(e, curves[best - 1]):
                best = epoch
                if acc.is_main_process:  # staged beside `out`, each file renamed in whole
                    with staged_into(out) as staging:
                        acc.unwrap_model(model).save_pretrained(staging)
            done_steps, loss_sum, seconds = 0, 0.0, 0.0
            self._save_checkpoint(
                out, model, optimizer, scheduler, fingerprint, curves, best, epoch + 1, 0, 0.0, 0.0
            )
        assert best is not None
        details = {
            "method": "LoRA (peft) on the language model's projections; vision tower frozen",
            "lora": {"r": self.rank, "alpha": 2 * self.rank, "dropout": 0.05, "targets": TARGETS},
            "trainable_parameters": n_trainable,
            "prompt": self.prompt,
            "processes": world,
            "mixed_precision": acc.mixed_precision,
            "loss": "cross-entropy on the answer tokens (label + end of turn) only",
            "end_of_turn": chat.end,
        }
        if acc.is_main_process:
            card = Card(
                base_model=self.source.base,
                labels=self.labels,
                prompt=self.prompt,
                lora=details["lora"],
                best_epoch=best,
                best_val_accuracy=curves[best - 1].val_accuracy,
                fingerprint=fingerprint,
                curves=curves,
                details=details,
            )
            write_text_atomic(out / CARD, card.model_dump_json(indent=2))
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        acc.wait_for_everyone()
        return _result(curves, best, details, world)

    def _loss(
        self, model: Any, chat: Chat, answers: list[list[int]], rows: Sequence[ManifestRow]
    ) -> torch.Tensor:
        """Mean cross-entropy of the answer tokens of a batch."""
        index = {lb: i for i, lb in enumerate(self.labels)}
        targets = [answers[index[r.label]] for r in rows]
        texts = [chat.prefix + r.label + chat.end for r in rows]
        enc = chat.encode(texts, [open_image(self.root, r) for r in rows]).to(
            self.accelerator.device
        )
        ids = enc["input_ids"]
        labels = torch.full_like(ids, -100)
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        for i, (n, target) in enumerate(zip(lengths, targets, strict=True)):
            got = ids[i, n - len(target) : n].tolist()
            if got != target:
                raise UserError(
                    f"{self.spec}: the processor tokenises the answer {rows[i].label!r} as {got}, "
                    f"not {target} as scored: a tokenizer this tool does not handle yet"
                )
            labels[i, n - len(target) : n] = ids[i, n - len(target) : n]
        with self.accelerator.autocast():
            out = model(**enc, labels=labels)
        return out.loss

    def _evaluate(
        self, scorer: LabelScorer, val: Sequence[ManifestRow]
    ) -> tuple[float | None, float | None]:
        """The true label's mean token loss and the accuracy, by label scoring (every process
        scores its share)."""
        from accelerate.utils import gather_object

        if not val:
            return None, None
        acc = self.accelerator
        index = {lb: i for i, lb in enumerate(self.labels)}
        mine: list[tuple[float, int]] = []
        for row in val[acc.process_index :: acc.num_processes]:
            sums, means = scorer.score(open_image(self.root, row))
            truth = index[row.label]
            mine.append((-float(means[truth]), int(int(torch.argmax(sums)) == truth)))
        everything = gather_object(mine)
        loss = sum(x[0] for x in everything) / len(everything)
        return loss, round(sum(x[1] for x in everything) / len(everything), 6)

    def _load_checkpoint(self, out: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        path = out / CHECKPOINT_DIR / "state.json"
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("ignoring an unreadable checkpoint in %s", path.parent)
            return None
        _check_same(state.get("fingerprint", {}), fingerprint, out)
        return state

    def _save_checkpoint(
        self,
        out: Path,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        fingerprint: dict[str, Any],
        curves: list[Epoch],
        best: int | None,
        epoch: int,
        step: int,
        loss_sum: float,
        seconds: float,
    ) -> None:
        """Everything a resumed run needs, written next to the final folder then swapped in."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = out / f".{CHECKPOINT_DIR}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            weights = get_peft_model_state_dict(acc.unwrap_model(model))
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                str(tmp / "adapter.safetensors"),
            )
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            state = {
                "fingerprint": fingerprint,
                "curves": [e.model_dump() for e in curves],
                "best": best,
                "epoch": epoch,
                "step": step,
                "loss_sum": loss_sum,
                "seconds": seconds,
            }
            (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
            fsync_tree(tmp)  # on disk before the rename makes it the checkpoint
            final = out / CHECKPOINT_DIR
            old = out / f".{CHECKPOINT_DIR}.old"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()


def _cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> Any:
    """Linear warmup, then cosine decay to zero (transformers' schedule)."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup, total)


def _better(new: Epoch, old: Epoch) -> bool:
    """Higher val accuracy wins; a tie goes to the lower val loss."""
    a, b = new.val_accuracy or 0.0, old.val_accuracy or 0.0
    if a != b:
        return a > b
    return (new.val_loss or math.inf) < (old.val_loss or math.inf)


def _check_same(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    changed = sorted(k for k in new if old.get(k) != new[k])
    if changed:
        raise UserError(
            f"{out} holds a LoRA run with other {', '.join(changed)}: train under another --name "
            "(or delete the folder to start again)"
        )


def _digest(rows: Sequence[ManifestRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r.id}|{r.label}|{r.image_sha256}\n".encode())
    return h.hexdigest()[:16]


def _result(curves: list[Epoch], best: int, details: dict[str, Any], world: int) -> TrainResult:
    """The run's record; its compute is every process's time (N GPUs for T seconds: N x T)."""
    return TrainResult(
        curves=curves,
        best_epoch=best,
        details=details,
        compute_s=round(world * sum(e.seconds or 0.0 for e in curves), 3),
    )


__all__ = ["LoraTrainer"]
