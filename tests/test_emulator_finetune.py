"""The emulator's fine-tuning jobs, through the real `openai` SDK, up to a usable model."""

from __future__ import annotations

import io
from pathlib import Path

import openai
import pytest

from emulator_support import (
    MODEL,
    answer_label,
    assert_spec,
    chat_body,
    jsonl,
    rows_and_labels,
    training_lines,
    wait_for,
)
from vlm_classify.backends.openai import tokens
from vlm_classify.emulator import Emulator, EmulatorConfig

DONE = ("succeeded", "failed", "cancelled")


def start(prepared: Path, **kw) -> tuple[Emulator, openai.OpenAI]:
    kw.setdefault("ft_seconds", 0.4)
    e = Emulator(EmulatorConfig(manifests=[prepared], check_responses=True, **kw)).start()
    return e, openai.OpenAI(base_url=e.base_url, api_key=e.api_key, max_retries=0)


def upload(c: openai.OpenAI, lines: list[dict]) -> str:
    return c.files.create(file=("train.jsonl", io.BytesIO(jsonl(lines))), purpose="fine-tune").id


def test_job_lifecycle_to_a_usable_model(small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "train")
    test_rows, _ = rows_and_labels(small_prepared, "test")
    emu, c = start(small_prepared, accuracy=0.0, ft_accuracy=1.0)
    try:
        lines = training_lines(small_prepared, rows, labels)
        job = c.fine_tuning.jobs.create(
            model=MODEL,
            training_file=upload(c, lines),
            suffix="dogs",
            seed=7,
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
            },
        )
        assert_spec("FineTuningJob", job)
        assert job.status == "validating_files" and job.fine_tuned_model is None and job.seed == 7
        seen = set()
        job = wait_for(
            lambda: c.fine_tuning.jobs.retrieve(job.id),
            lambda j: seen.add(j.status) or j.status in DONE,
        )
        assert job.status == "succeeded", job.error
        assert {"validating_files", "succeeded"} <= seen
        assert_spec("FineTuningJob", job)
        assert job.fine_tuned_model.startswith(f"ft:{MODEL}:emulated:dogs:")
        assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
        per_example = [
            tokens.count_chat_tokens(line["messages"]) + 85 for line in lines
        ]  # low-detail images
        assert job.trained_tokens == sum(per_example) * 2
        assert job.finished_at and job.result_files

        events = c.fine_tuning.jobs.list_events(job.id, limit=100)
        messages = [e.message for e in events.data]
        assert any(m.startswith("Step ") and "training loss=" in m for m in messages)
        assert messages[0] == "The job has successfully completed"  # newest first
        assert "Fine-tuning job started" in messages and messages[-1].startswith(
            "Created fine-tuning job"
        )
        for e in events.data:
            assert_spec("FineTuningJobEvent", e)
        ckpts = c.fine_tuning.jobs.checkpoints.list(job.id)
        assert [ck.step_number for ck in ckpts.data] == [
            18,
            9,
        ]  # 36 examples / 4 per step x 2 epochs
        assert ckpts.data[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-18"
        for ck in ckpts.data:
            assert_spec("FineTuningJobCheckpoint", ck)
        csv = c.files.content(job.result_files[0]).text.splitlines()
        assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
        assert len(csv) == 1 + 18

        assert job.fine_tuned_model in [m.id for m in c.models.list()]
        assert c.models.retrieve(job.fine_tuned_model).owned_by == "vlm-classify-emulator"
        for row in test_rows:
            ft = c.chat.completions.create(
                **chat_body(small_prepared, row, labels, model=job.fine_tuned_model)
            )
            base = c.chat.completions.create(**chat_body(small_prepared, row, labels))
            assert ft.model == job.fine_tuned_model
            assert answer_label(ft.choices[0].message.content) == row.label
            assert answer_label(base.choices[0].message.content) != row.label
        assert [j.id for j in c.fine_tuning.jobs.list()] == [job.id]
    finally:
        emu.stop()
    assert emu.stats.schema_errors == []


def test_too_few_examples_fail_the_job(small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "train")
    emu, c = start(small_prepared, ft_seconds=0)
    try:
        job = c.fine_tuning.jobs.create(
            model=MODEL, training_file=upload(c, training_lines(small_prepared, rows[:5], labels))
        )
        assert job.status == "failed"
        assert job.error.code == "invalid_n_examples" and job.error.param == "training_file"
        assert "at least 10 examples" in job.error.message
        assert_spec("FineTuningJob", job)
    finally:
        emu.stop()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"not json\n", "Line 1 is not valid JSON"),
        (jsonl([{"prompt": "x", "completion": "y"}] * 12), 'missing key "messages"'),
        (jsonl([{"messages": [{"role": "user", "content": "hi"}]}] * 12), "no assistant message"),
        (jsonl([{"messages": [{"role": "robot", "content": "hi"}]}] * 12), "role"),
    ],
)
def test_invalid_training_file_fails_the_job(
    small_prepared: Path, content: bytes, needle: str
) -> None:
    emu, c = start(small_prepared, ft_seconds=0)
    try:
        f = c.files.create(file=("t.jsonl", io.BytesIO(content)), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
        assert job.status == "failed" and needle in job.error.message
    finally:
        emu.stop()


def test_create_refusals(small_prepared: Path) -> None:
    emu, c = start(small_prepared)
    try:
        batch_file = c.files.create(file=("b.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        with pytest.raises(openai.BadRequestError) as e:
            c.fine_tuning.jobs.create(model=MODEL, training_file=batch_file.id)
        assert "fine-tune" in e.value.message
        with pytest.raises(openai.BadRequestError) as e:
            c.fine_tuning.jobs.create(model="gpt-3000", training_file=batch_file.id)
        assert "not available for fine-tuning" in e.value.message
        with pytest.raises(openai.NotFoundError):
            c.fine_tuning.jobs.retrieve("ftjob-missing")
    finally:
        emu.stop()


def test_fault_makes_the_job_fail_and_cancel_works(small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "train")
    emu, c = start(small_prepared, faults={"ft_fail": 1.0}, ft_seconds=0.3)
    try:
        job = c.fine_tuning.jobs.create(
            model=MODEL, training_file=upload(c, training_lines(small_prepared, rows, labels))
        )
        job = wait_for(lambda: c.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in DONE)
        assert (
            job.status == "failed"
            and job.error.code == "server_error"
            and job.fine_tuned_model is None
        )
        assert emu.stats.faults["ft_fail"] == 1
        assert c.fine_tuning.jobs.list_events(job.id).data[0].level == "error"
    finally:
        emu.stop()
    emu, c = start(small_prepared, ft_seconds=30)
    try:
        job = c.fine_tuning.jobs.create(
            model=MODEL, training_file=upload(c, training_lines(small_prepared, rows, labels))
        )
        cancelled = c.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        assert_spec("FineTuningJob", cancelled)
        with pytest.raises(openai.BadRequestError):
            c.fine_tuning.jobs.cancel(job.id)
    finally:
        emu.stop()
