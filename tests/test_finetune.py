"""`finetune` and `deploy` end to end: the real openai SDK against the emulator."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import openai
import pytest

from vlm_classify.backends.openai.deploy import DeployOptions, deploy
from vlm_classify.backends.openai.finetune import FinetuneEvent, FinetuneOptions, finetune
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.cli import main
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.errors import FatalError, UserError
from vlm_classify.runner import RunnerConfig

BASE = "gpt-4o-2024-08-06"
FAST = RunnerConfig(concurrency=4, initial_backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture
def emu(small_prepared: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = EmulatorConfig(
        manifests=[small_prepared],
        accuracy=0.0,
        ft_accuracy=1.0,
        ft_seconds=0.3,
        check_responses=True,
    )
    with Emulator(cfg) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        yield e
        assert e.stats.schema_errors == []


def _client(e: Emulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=e.base_url, api_key=e.api_key)


def _ft(**kw) -> FinetuneOptions:
    kw.setdefault("model", f"openai/{BASE}")
    kw.setdefault("name", "ft-job")
    kw.setdefault("poll_s", 0.05)
    return FinetuneOptions(**kw)


def test_finetune_then_evaluate_the_fine_tuned_model(small_prepared: Path, emu: Emulator) -> None:
    events: list[FinetuneEvent] = []
    result = finetune(small_prepared, _ft(suffix="dogs", epochs=2), on_event=events.append)
    rec = json.loads(result.path.read_text())
    assert rec["status"] == "succeeded" and rec["fine_tuned_model"].startswith(f"ft:{BASE}")
    assert rec["trained_tokens"] > 36 * 2 * 85  # 36 examples, 2 epochs, each at least an image
    assert rec["hyperparameters"]["n_epochs"] == 2 and rec["emulated"] is True
    assert rec["base_model"] == f"openai/{BASE}"
    with (result.path.parent / rec["results_csv"]).open() as f:
        header = next(csv.reader(f))
    assert header[0] == "step" and "train_loss" in header
    statuses = [e.message for e in events if e.kind == "status"]
    assert any("succeeded" in m for m in statuses)
    assert any(e.kind == "event" for e in events)
    # the job used the exported files
    job = _client(emu).fine_tuning.jobs.retrieve(rec["job_id"])
    assert job.validation_file and job.seed == 42

    zs = classify(small_prepared, ClassifyOptions(model=f"openai/{BASE}", name="zs", runner=FAST))
    ft = classify(
        small_prepared,
        ClassifyOptions(model=f"openai/{rec['fine_tuned_model']}", name="ft", runner=FAST),
    )
    assert zs.totals["accuracy"] == 0.0 and ft.totals["accuracy"] == 1.0
    arm = json.loads((ft.arm_dir / "arm.json").read_text())
    assert (
        arm["fine_tune"]["job_arm"] == "ft-job"
        and arm["fine_tune"]["trained_tokens"] == rec["trained_tokens"]
    )
    assert "fine_tune" not in json.loads((zs.arm_dir / "arm.json").read_text())


def test_rerun_reattaches_to_the_same_job(small_prepared: Path, emu: Emulator) -> None:
    first = finetune(small_prepared, _ft(detach=True))
    assert first.record["status"] not in ("succeeded", "failed")
    again = finetune(small_prepared, _ft())
    assert again.record["job_id"] == first.record["job_id"]
    assert len(_client(emu).fine_tuning.jobs.list().data) == 1
    followed = finetune(small_prepared, _ft(follow_only=True))
    assert followed.record["job_id"] == first.record["job_id"]


def test_a_lost_job_id_is_found_by_its_metadata(small_prepared: Path, emu: Emulator) -> None:
    from vlm_classify.store import Store

    first = finetune(small_prepared, _ft(detach=True))
    with Store.for_dir(small_prepared) as store:  # crash between create and saving the id
        store._db.execute("DELETE FROM remote_objects WHERE kind = 'ft_job'")
    again = finetune(small_prepared, _ft())
    assert again.record["job_id"] == first.record["job_id"]
    assert len(_client(emu).fine_tuning.jobs.list().data) == 1


def test_follow_without_a_job_is_one_clear_error(small_prepared: Path, emu: Emulator) -> None:
    with pytest.raises(UserError, match="no fine-tuning job to follow"):
        finetune(small_prepared, _ft(follow_only=True))


def test_a_failed_job_shows_the_service_error(small_prepared: Path, monkeypatch) -> None:
    cfg = EmulatorConfig(manifests=[small_prepared], ft_seconds=0.2, faults="ft_fail=1.0")
    with Emulator(cfg) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        with pytest.raises(FatalError, match=r"failed: .+rerun with a new --name"):
            finetune(small_prepared, _ft())


def test_too_few_training_examples_is_refused_before_upload(tmp_path: Path, emu: Emulator) -> None:
    from conftest import make_prepared_dir

    small = make_prepared_dir(tmp_path / "tiny", ["A", "B"], {"train": 3, "val": 1, "test": 1})
    with pytest.raises(UserError, match="10"):
        finetune(small, _ft())
    assert _client(emu).files.list().data == []


def test_azure_finetune_deploy_and_evaluate(small_prepared: Path, emu: Emulator) -> None:
    result = finetune(small_prepared, _ft(model=f"azure/{BASE}"))
    printed = deploy(small_prepared, DeployOptions(job="ft-job", deployment="dogs-ft"))
    assert not printed.sent and "az cognitiveservices account deployment create" in printed.command
    assert result.record["fine_tuned_model"] in printed.command
    # the user runs the printed command: the name is recorded already
    assert json.loads(result.path.read_text())["deployments"] == ["dogs-ft"]
    sent = deploy(
        small_prepared,
        DeployOptions(
            job="ft-job",
            deployment="dogs-ft",
            subscription="s",
            resource_group="rg",
            account="acct",
        ),
    )
    assert sent.sent and sent.response["properties"]["provisioningState"] == "Succeeded"
    assert json.loads(result.path.read_text())["deployments"] == ["dogs-ft"]
    ft = classify(small_prepared, ClassifyOptions(model="azure/dogs-ft", name="ft", runner=FAST))
    assert ft.totals["accuracy"] == 1.0
    assert json.loads((ft.arm_dir / "arm.json").read_text())["fine_tune"]["job_arm"] == "ft-job"


def test_a_deployment_named_without_ft_is_known_by_its_record_and_never_batched(
    small_prepared: Path, emu: Emulator
) -> None:
    finetune(small_prepared, _ft(model=f"azure/{BASE}"))
    opts = DeployOptions(
        job="ft-job", deployment="dogs", subscription="s", resource_group="rg", account="acct"
    )
    assert deploy(small_prepared, opts).sent
    uploads = sum(n for r, n in emu.stats.routes.items() if r.startswith("POST") and "files" in r)
    messages: list[str] = []
    result = classify(
        small_prepared,
        ClassifyOptions(model="azure/dogs", name="ft", mode="batch", runner=FAST),
        on_status=messages.append,
    )
    assert any("is a fine-tuned deployment" in m for m in messages)
    after = sum(n for r, n in emu.stats.routes.items() if r.startswith("POST") and "files" in r)
    assert after == uploads  # no Batch input uploaded, no batch created
    assert not any(r.startswith("POST") and "batches" in r for r in emu.stats.routes)
    with (result.arm_dir / "predictions.csv").open(newline="") as f:
        assert {r["mode"] for r in csv.DictReader(f)} == {"realtime"}
    arm = json.loads((result.arm_dir / "arm.json").read_text())
    assert arm["fine_tuned"] is True and arm["fine_tune"]["job_arm"] == "ft-job"
    assert arm["mode"] == "realtime"  # what ran, not what was asked


def test_a_fine_tune_record_names_a_model_of_its_own_provider_only(tmp_path: Path) -> None:
    from vlm_classify.arms import find_fine_tune

    job = tmp_path / "arms" / "ft-job"
    job.mkdir(parents=True)
    record = {
        "base_model": "azure/gpt-4o",
        "fine_tuned_model": "gpt-4o.ft-abc",
        "deployments": ["x"],
    }
    (job / "finetune.json").write_text(json.dumps(record))
    assert find_fine_tune(tmp_path, "azure/x")["job_arm"] == "ft-job"
    assert find_fine_tune(tmp_path, "azure/gpt-4o.ft-abc") is not None
    assert find_fine_tune(tmp_path, "openai/x") is None  # same name, another provider
    assert find_fine_tune(tmp_path, "openai/gpt-4o.ft-abc") is None


def test_deploy_needs_a_token_and_a_finished_job(
    small_prepared: Path, emu: Emulator, monkeypatch
) -> None:
    with pytest.raises(UserError, match="finetune"):
        deploy(small_prepared, DeployOptions(job="nope", deployment="d"))
    finetune(small_prepared, _ft(model=f"azure/{BASE}"))
    monkeypatch.delenv("AZURE_MANAGEMENT_TOKEN")
    opts = DeployOptions(
        job="ft-job", deployment="d", subscription="s", resource_group="r", account="a"
    )
    with pytest.raises(UserError, match="AZURE_MANAGEMENT_TOKEN"):
        deploy(small_prepared, opts)
    monkeypatch.setenv("AZURE_MANAGEMENT_TOKEN", "wrong")
    with pytest.raises(FatalError, match="refused \\(401\\)"):
        deploy(small_prepared, opts)


def test_cli_finetune_prints_the_next_step(small_prepared: Path, emu: Emulator, capsys) -> None:
    main(
        [
            "finetune",
            str(small_prepared),
            "--model",
            f"openai/{BASE}",
            "--name",
            "ft-job",
            "--poll",
            "0.05",
        ]
    )
    out = capsys.readouterr()
    assert "fine-tuned model: ft:" in out.out and "vlm-classify classify" in out.out
    assert "emulated" in out.out
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "finetune",
                str(small_prepared),
                "--model",
                f"openai/{BASE}",
                "--name",
                "x",
                "--epochs",
                "zero",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and "--epochs" in err


def test_a_job_the_server_lost_is_started_again(small_prepared: Path, monkeypatch) -> None:
    def serve() -> Emulator:
        e = Emulator(EmulatorConfig(manifests=[small_prepared], ft_seconds=0.2)).start()
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        return e

    first_emu = serve()
    try:
        first = finetune(small_prepared, _ft(detach=True))
    finally:
        first_emu.stop()
    events: list[FinetuneEvent] = []
    second_emu = serve()
    try:
        second = finetune(small_prepared, _ft(), on_event=events.append)
    finally:
        second_emu.stop()
    assert first.record["status"] != "succeeded"
    assert second.record["status"] == "succeeded" and second.record["fine_tuned_model"]
    assert any("unknown to this server" in e.message for e in events)
    assert any(e.kind == "file" and "uploading train.jsonl" in e.message for e in events)
