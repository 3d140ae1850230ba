"""The `hf/` provider: an open generative VLM zero-shot by label scoring (checked against one full
forward per label) and by free generation, a LoRA adapter trained here that beats it on a
learnable task, resumed after kill -9, and trained by two processes under accelerate. The model
is a tiny random Qwen2-VL made here and loaded back through the Auto classes; nothing downloads."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch
from PIL import Image

from cli_support import run_cli
from local_support import LABELS, colour_prepared, write_qwen2_vl_dir
from vlm_classify.backends.base import LocalSettings
from vlm_classify.backends.local import hf_model, hf_vlm
from vlm_classify.models import ModelRef

CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen2_vl_dir(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl")


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    return colour_prepared(tmp_path / "p", {"train": 10, "val": 4, "test": 6})


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _scorer(model_dir: Path, prepared: Path, labels: list[str], batch: int) -> hf_model.LabelScorer:
    backend = hf_vlm.make_backend(
        ModelRef("hf", str(model_dir)), labels, prepared, LocalSettings(device="cpu")
    )
    loaded = backend._loaded
    assert loaded is not None
    return hf_model.LabelScorer(loaded, backend._chat, batch)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "row-per-label"])
def test_cached_label_scores_equal_one_full_forward_per_label(
    tiny_vlm: Path, prepared: Path, packed: bool
) -> None:
    labels = [*LABELS, "Golden"]  # a label that is the start of another
    scorer = _scorer(tiny_vlm, prepared, labels, batch=3)  # two passes: 3 labels, then 1
    scorer.packed = packed
    image = Image.new("RGB", (48, 40), (200, 40, 40))
    sums, means = scorer.score(image)
    full = scorer.score_full(image)
    assert torch.allclose(sums, full, atol=1e-4), (sums, full)
    lengths = torch.tensor([len(t) for t in scorer.tokens.ids], dtype=torch.float64)
    assert torch.allclose(means, sums / lengths)
    # the end-of-turn marker tells "Golden" from "Golden Retriever": different sequences, scores
    assert scorer.tokens.ids[3] != scorer.tokens.ids[2][: len(scorer.tokens.ids[3])]
    assert sums[3] != sums[2]
    # a second image reuses nothing of the first (the cache is copied, never extended in place)
    other = Image.new("RGB", (48, 40), (30, 30, 220))
    assert torch.allclose(scorer.score(other)[0], scorer.score_full(other), atol=1e-4)
    assert torch.allclose(scorer.score(image)[0], sums, atol=1e-6)
    assert scorer.packed == packed  # the packed path ran (a model refusing it would fall back)
    if packed:  # checked once against one row per label
        assert scorer.packed_check is not None and "max difference" in scorer.packed_check


def test_a_model_that_ignores_the_packed_mask_falls_back(
    tiny_vlm: Path, prepared: Path, monkeypatch
) -> None:
    """A model that does not honour the 4D mask (packed scores off by whole nats) is caught on
    the first chunk and scored one row per label from then on."""
    scorer = _scorer(tiny_vlm, prepared, LABELS, batch=8)
    real = hf_model.LabelScorer._packed
    monkeypatch.setattr(
        hf_model.LabelScorer, "_packed", lambda self, *a: real(self, *a) - 2.0
    )  # what attending to the other labels' tokens would look like
    image = Image.new("RGB", (48, 40), (40, 200, 60))
    sums, _ = scorer.score(image)
    assert not scorer.packed and "max difference 2" in (scorer.packed_check or "")
    assert torch.allclose(sums, scorer.score_full(image), atol=1e-4)


def test_labels_are_tokenised_as_they_follow_the_prompt(tiny_vlm: Path, prepared: Path) -> None:
    scorer = _scorer(tiny_vlm, prepared, LABELS, batch=8)
    chat, tok = scorer.chat, scorer.chat.tokenizer
    assert chat.end == "<|im_end|>"
    for label, ids in zip(LABELS, scorer.tokens.ids, strict=True):
        together = tok(chat.prefix + label + chat.end, add_special_tokens=False)["input_ids"]
        assert together[-len(ids) :] == ids
        assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_classify_scores_every_label_for_every_item(tiny_vlm: Path, prepared: Path, capsys) -> None:
    args = ["classify", str(prepared), "--model", f"hf/{tiny_vlm}", "--name", "vlm-zs", *CPU]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "images/s on cpu" in out
    rows = _rows(prepared / "arms" / "vlm-zs" / "predictions.csv")
    assert len(rows) == 18
    for r in rows:
        scores = json.loads(r["scores"])
        assert set(scores) == set(LABELS)
        assert sum(scores.values()) == pytest.approx(1, abs=1e-4)
        assert r["valid"] == "1" and r["prediction"] == max(scores, key=scores.__getitem__)
        raw = json.loads(r["raw_answer"])
        assert raw["label"] == r["prediction"] and raw["length_normalised"] in LABELS
    arm = json.loads((prepared / "arms" / "vlm-zs" / "arm.json").read_text())
    model = arm["compute"]["model"]
    assert model["answer"] == "score" and model["prompt"] == "full"
    assert model["end_of_turn"] == "<|im_end|>" and model["adapter"] is None
    assert arm["settings"]["answer"] == "score" and arm["settings"]["prompt"] == "full"
    # the default said out loud resumes the same arm
    code, out, err = run_cli([*args, "--prompt", "full"], capsys)
    assert code == 0 and "18 items were already done" in out, err
    # rerun: nothing asked again
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "18 items were already done" in out


def test_free_generation_is_parsed_like_a_cloud_answer(
    tiny_vlm: Path, prepared: Path, capsys
) -> None:
    args = ["classify", str(prepared), "--model", f"hf/{tiny_vlm}", "--name", "vlm-gen"]
    code, _out, err = run_cli([*args, "--answer", "text", "--max-new-tokens", "6", *CPU], capsys)
    assert code == 0, err
    rows = _rows(prepared / "arms" / "vlm-gen" / "predictions.csv")
    assert len(rows) == 18
    for r in rows:
        assert r["scores"] == "" and r["confidence"] == ""  # no distribution from free text
        assert 1 <= int(r["completion_tokens"]) <= 6
        assert (r["valid"] == "1") == (r["prediction"] in LABELS)
    arm = json.loads((prepared / "arms" / "vlm-gen" / "arm.json").read_text())
    assert arm["settings"]["answer"] == "text" and arm["settings"]["max_new_tokens"] == 6


def test_lora_beats_zero_shot_and_its_adapter_is_a_model_string(
    tiny_vlm: Path, prepared: Path, capsys
) -> None:
    base = f"hf/{tiny_vlm}"
    for command in (
        ["classify", str(prepared), "--model", base, "--name", "zero-shot", *CPU],
        [
            "finetune",
            str(prepared),
            "--model",
            base,
            "--name",
            "lora",
            "--epochs",
            "4",
            "--lr",
            "1e-2",
            "--lora-rank",
            "8",
            *CPU,
        ],
        ["classify", str(prepared), "--model", "hf/arm:lora", "--name", "lora-eval", *CPU],
    ):
        code, _out, err = run_cli(command, capsys)
        assert code == 0, err
    job = json.loads((prepared / "arms" / "lora" / "finetune.json").read_text())
    assert job["fine_tuned_model"] == "hf/arm:lora" and job["hyperparameters"]["lora_rank"] == 8
    assert [e["epoch"] for e in job["curves"]] == [1, 2, 3, 4]
    assert all(e["val_loss"] is not None and e["val_accuracy"] is not None for e in job["curves"])
    best = job["curves"][job["best_epoch"] - 1]["val_accuracy"]
    assert best == max(e["val_accuracy"] for e in job["curves"])
    adapter = prepared / "arms" / "lora" / "model"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "vlm.json").is_file()
    assert not (adapter / "checkpoint").exists()  # finished: the checkpoint is gone
    zs = json.loads((prepared / "arms" / "zero-shot" / "arm.json").read_text())["totals"]
    ft = json.loads((prepared / "arms" / "lora-eval" / "arm.json").read_text())
    assert ft["fine_tuned"] and ft["compute"]["model"]["adapter"] == str(adapter)
    assert ft["totals"]["accuracy"] >= 0.9 and zs["accuracy"] <= 0.5, (ft["totals"], zs)
    # the adapter folder itself is a model string too (its base from the card)
    args = ["classify", str(prepared), "--model", f"hf/{adapter}", "--name", "by-folder", *CPU]
    code, _out, err = run_cli(args, capsys)
    assert code == 0, err
    by_folder = _rows(prepared / "arms" / "by-folder" / "predictions.csv")
    assert [r["prediction"] for r in by_folder] == [
        r["prediction"] for r in _rows(prepared / "arms" / "lora-eval" / "predictions.csv")
    ]
    # the report puts the VLM arms next to each other on the same ids
    code, _out, err = run_cli(["report", str(prepared), "--baseline", "zero-shot"], capsys)
    assert code == 0, err
    metrics = json.loads((prepared / "report" / "metrics.json").read_text())
    assert metrics["arms"]["lora-eval"]["fine_tuned"] and metrics["dataset"]["compared_items"] == 18


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlm_classify", *args]


def test_lora_resumes_after_kill(tiny_vlm: Path, prepared: Path) -> None:
    command = _cli(
        "finetune", str(prepared), "--model", f"hf/{tiny_vlm}", "--name", "lora", "--epochs", "8",
        "--lr", "1e-3", *CPU,
    )  # fmt: skip
    state = prepared / "arms" / "lora" / "model" / "checkpoint" / "state.json"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if state.is_file() and json.loads(state.read_text())["epoch"] >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = json.loads(state.read_text())
    assert done["epoch"] >= 2 and not (prepared / "arms" / "lora" / "finetune.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    epochs = [line for line in resumed.stderr.splitlines() if line.startswith("epoch ")]
    assert epochs[0].startswith(f"epoch {done['epoch']},")  # no finished epoch trained twice
    job = json.loads((prepared / "arms" / "lora" / "finetune.json").read_text())
    assert [e["epoch"] for e in job["curves"]] == list(range(1, 9))


def test_two_processes_under_accelerate(tiny_vlm: Path, prepared: Path) -> None:
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "vlm_classify", "finetune", str(prepared), "--model", f"hf/{tiny_vlm}",
        "--name", "lora2", "--epochs", "2", "--lr", "1e-2", "--batch-size", "2", *CPU,
    ]  # fmt: skip
    done = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("fine-tuned model: hf/arm:lora2") == 1  # the main process speaks
    job = json.loads((prepared / "arms" / "lora2" / "finetune.json").read_text())
    assert job["details"]["processes"] == 2
    # both processes' time is the job's compute
    assert job["compute_s"] == pytest.approx(2 * sum(e["seconds"] for e in job["curves"]), rel=1e-3)
    assert (prepared / "arms" / "lora2" / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--answer", "enum"], "--answer enum is structured output of a chat API"),
        (["--templates", "t.json"], "--templates is for clip/ models"),
        (["--concurrency", "4"], "--concurrency is for azure/, openai/ models"),
    ],
)
def test_options_hf_does_not_take_are_one_line(
    tiny_vlm: Path, prepared: Path, capsys, args: list[str], message: str
) -> None:
    code, _, err = run_cli(
        ["classify", str(prepared), "--model", f"hf/{tiny_vlm}", "--name", "x", *args], capsys
    )
    assert code != 0 and message in err and "Traceback" not in err


def test_bad_hf_names_are_one_line(tmp_path: Path, prepared: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    cases = {
        "hf/arm:nothing": "holds no trained model",
        f"hf/{tmp_path / 'empty'}": "a folder without config.json",
        "hf/not-a-hub-id": "not a hub id",
    }
    for model, message in cases.items():
        code, _, err = run_cli(["classify", str(prepared), "--model", model, "--name", "x"], capsys)
        assert code == 1 and message in err, err
    code, _, err = run_cli(
        ["classify", str(prepared), "--model", "hf/owner/absent", "--name", "x", "--offline"],
        capsys,
    )
    assert code == 1 and "offline" in err and "hf download owner/absent" in err


def test_an_interrupted_epoch_resumes_to_the_same_adapter(
    tiny_vlm: Path, prepared: Path, monkeypatch
) -> None:
    """Stopped mid-epoch (after a checkpoint), the rerun continues from that step and ends with
    the adapter an uninterrupted run trains."""
    from safetensors.torch import load_file

    from vlm_classify.backends.local import hf_train
    from vlm_classify.training import TrainOptions, train_local

    monkeypatch.setattr(hf_train, "CHECKPOINT_STEPS", 2)
    settings = LocalSettings(device="cpu", offline=True)

    def options(name: str) -> TrainOptions:
        return TrainOptions(
            model=f"hf/{tiny_vlm}", name=name, epochs=2, batch_size=4, lr=5e-3, local=settings
        )

    train_local(prepared, options("straight"))
    steps = 0
    real_loss = hf_train.LoraTrainer._loss

    def stop_at_step_13(self, *args):  # epoch 2's 5th step: its checkpoint is after step 4
        nonlocal steps
        steps += 1
        if steps == 13:
            raise KeyboardInterrupt
        return real_loss(self, *args)

    monkeypatch.setattr(hf_train.LoraTrainer, "_loss", stop_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        train_local(prepared, options("resumed"))
    state = json.loads(
        (prepared / "arms" / "resumed" / "model" / "checkpoint" / "state.json").read_text()
    )
    assert (state["epoch"], state["step"]) == (2, 4)
    steps = 100  # no more interruptions; count the rerun's steps
    job = train_local(prepared, options("resumed"))
    assert steps - 100 == 4  # 8 steps an epoch (30 images, 4 a batch): only 4 remained
    assert [e["epoch"] for e in job["curves"]] == [1, 2]
    a = load_file(str(prepared / "arms" / "straight" / "model" / "adapter_model.safetensors"))
    b = load_file(str(prepared / "arms" / "resumed" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
