"""`vlm-classify run EXPERIMENT.toml`: validated as a whole, every step in order against the
built-in emulator (started and stopped by the run), skipped when done, rerun (saying why) when an
input changed, resumed after an interrupt or kill -9 at each step without asking twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_support import run_cli
from vlm_classify.experiment import load_experiment
from vlm_classify.run import Runner, RunResult, run_experiment

EXPERIMENT = """\
[dataset]
source = "generated"
classes = 3
split = [5, 1, 3]

[emulator]
accuracy = 0.7
ft_accuracy = 0.9
latency_scale = 0.01
latency_profile = "seed-study"
batch_seconds = 0.3
ft_seconds = 0.3

[[arm]]
name = "base"
model = "openai/gpt-4o-2024-08-06"
mode = "batch"

[[arm]]
name = "ft"
finetune = { from = "openai/gpt-4o-2024-08-06", epochs = 2 }

[latency]
arms = ["base", "ft"]
requests = 6
concurrency = [1, 3]

[report]
baseline = "base"
"""
STEPS = [
    "prepare",
    "estimate",
    "finetune:ft",
    "classify:base",
    "classify:ft",
    "latency:base",
    "latency:ft",
    "report",
]


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self.messages: list[str] = []

    def step(self, step: str, action: str, why: str) -> None:
        self.lines.append((step, action, why))

    def status(self, message: str) -> None:
        self.messages.append(message)

    def progress(self, step: str, done: int, total: int | None) -> None:
        pass

    def actions(self) -> dict[str, str]:
        return {s: a for s, a, _ in self.lines}


def write(tmp_path: Path, text: str = EXPERIMENT, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(path: Path, out: Path, **kw) -> tuple[RunResult, Recorder]:
    ui = Recorder()
    return run_experiment(path, out=out, ui=ui, **kw), ui


def test_runs_every_step_then_skips_them_and_reruns_only_what_changed(tmp_path: Path) -> None:
    path, out = write(tmp_path), tmp_path / "out"
    result, ui = run(path, out)
    assert result.ran == STEPS and result.emulated
    assert result.report == out / "report" / "report.html" and result.report.is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["arms"]) == {"base", "ft"} and metrics["arms"]["ft"]["fine_tuned"]
    assert (out / "arms" / "base" / "latency.csv").is_file()
    state = json.loads((out / "run.json").read_text())
    ft_model = state["steps"]["finetune:ft"]["outputs"]["fine_tuned_model"]
    assert ft_model.startswith("ft:gpt-4o-2024-08-06")
    assert state["steps"]["classify:ft"]["inputs"]["model"] == f"openai/{ft_model}"  # no copying
    assert "OPENAI_BASE_URL" not in os.environ  # the emulator's variables are gone with it

    again, ui = run(path, out)
    assert again.ran == [] and again.skipped == STEPS

    # a report setting reruns the report only; an arm's prompt reruns that arm, then the report
    changed = EXPERIMENT.replace('baseline = "base"', 'baseline = "base"\nvolume = 500')
    changed = changed.replace('mode = "batch"', 'mode = "batch"\nprompt = "short"')
    third, ui = run(write(tmp_path, changed), out)
    assert third.ran == ["estimate", "classify:base", "latency:base", "report"]
    why = {s: w for s, a, w in ui.lines if a == "run"}
    assert why["classify:base"] == "changed: settings.prompt"
    assert why["report"].startswith("changed: report.volume")
    arm = json.loads((out / "arms" / "base" / "arm.json").read_text())
    assert arm["settings"]["prompt"] == "short"  # the arm was reset and asked again
    assert arm["last_run"]["completed"] == 9


def test_dry_run_prints_the_plan_and_the_cost_and_spends_nothing(tmp_path: Path) -> None:
    path, out = write(tmp_path), tmp_path / "out"
    first, ui = run(path, out, dry_run=True)
    assert first.ran == [] and not (out / "run.json").exists()
    assert ui.actions()["prepare"] == "plan"
    assert any("after prepare" in m for m in ui.messages)
    run(path, out, only="prepare")
    second, ui = run(path, out, dry_run=True)
    assert second.planned == STEPS[2:] and second.ran == []
    by_arm = {e["arm"]: e["usd"] for e in second.estimate}
    assert set(by_arm) == {"base", "ft"} and by_arm["ft"] > by_arm["base"] > 0
    state = json.loads((out / "run.json").read_text())
    assert set(state["steps"]) == {"prepare"}  # nothing else ran


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            EXPERIMENT.replace("classes = 3", "classes = 3\nclases = 4"),
            "exp.toml:4: unknown key 'dataset.clases'",
        ),
        (
            EXPERIMENT.replace('mode = "batch"', 'mode = "batch"\nprompts = "x"'),
            "exp.toml:18: unknown key 'arm.0.prompts'",
        ),
        (EXPERIMENT.replace('name = "ft"', 'name = "base"'), "arm name 'base' is used twice"),
        (
            EXPERIMENT.replace('arms = ["base", "ft"]', 'arms = ["base", "gone"]'),
            "names arm 'gone'",
        ),
        (
            EXPERIMENT.replace("openai/gpt-4o-2024-08-06", "nope/x", 1),
            "provider 'nope' is not one of",
        ),
        (EXPERIMENT.replace("[dataset]", "[dataset"), "not valid TOML"),
        (
            EXPERIMENT.replace("epochs = 2 }", "epochs = 2, epoch = 3 }"),
            "unknown key 'arm.1.finetune.epoch'",
        ),
    ],
)
def test_a_mistake_is_one_line_before_anything_runs(
    tmp_path: Path, capsys, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    code, _, err = run_cli(["run", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # nothing prepared, nothing uploaded


def test_no_credentials_and_no_emulator_is_one_line_before_prepare(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    text = EXPERIMENT.split("[emulator]")[0] + "[[arm]]" + EXPERIMENT.split("[[arm]]", 1)[1]
    code, _, err = run_cli(
        ["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "OPENAI_API_KEY is not set" in err
    assert not (tmp_path / "o").exists()


def test_a_dataset_too_small_for_the_split_is_one_line(tmp_path: Path, capsys) -> None:
    text = EXPERIMENT.replace("classes = 3", "classes = 3\nimages_per_class = 4")
    code, _, err = run_cli(
        ["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "fewer than 9 usable images" in err and "Traceback" not in err, err
    assert "set strict = false" in err
    assert not (tmp_path / "o" / "arms").exists()  # no arm ran, nothing billed


def test_env_file_keys_are_read_and_never_written(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    env = tmp_path / ".env"
    env.write_text('export OPENAI_API_KEY="sk-test-SECRET-123"  \n# a comment\n', encoding="utf-8")
    text = EXPERIMENT.split("[emulator]")[0] + "[[arm]]" + EXPERIMENT.split("[[arm]]", 1)[1]
    path, out = write(tmp_path, text), tmp_path / "o"
    log = tmp_path / "run.log"
    args = ["run", str(path), "--out", str(out), "--env-file", str(env), "--log", str(log)]
    args += ["--only", "prepare"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert os.environ.get("OPENAI_API_KEY") == "sk-test-SECRET-123"
    files = [p for p in [*out.rglob("*"), log] if p.is_file()]
    assert files and not any(b"SECRET" in p.read_bytes() for p in files)
    assert "SECRET" not in stdout + err
    assert "run prepare (new)" in log.read_text()


def test_only_runs_one_step_and_needs_what_it_depends_on(tmp_path: Path, capsys) -> None:
    path, out = write(tmp_path), tmp_path / "out"
    code, _, err = run_cli(["run", str(path), "--out", str(out), "--only", "report"], capsys)
    assert code == 1 and "it needs step prepare, which has not run yet" in err
    code, _, err = run_cli(["run", str(path), "--out", str(out), "--only", "nothing"], capsys)
    assert code == 1 and "not a step of this experiment" in err


class Interrupt(BaseException):
    pass


@pytest.mark.parametrize("step", ["finetune:ft", "classify:ft", "report"])
def test_ctrl_c_in_a_step_then_the_same_command_finishes_without_asking_twice(
    tmp_path: Path, step: str
) -> None:
    """Interrupted by the first message of `step` (its own work under way), a second run resumes
    it and the items already answered are not asked again."""
    path, out = write(tmp_path), tmp_path / "out"
    exp, _ = load_experiment(path)

    class Stopper(Recorder):
        current: str | None = None

        def step(self, s: str, action: str, why: str) -> None:
            super().step(s, action, why)
            self.current = s if action == "run" else None

        def status(self, message: str) -> None:
            super().status(message)
            if self.current == step and not step.startswith(("report", "latency")):
                raise KeyboardInterrupt

        def progress(self, s: str, done: int, total: int | None) -> None:
            if s == step and done >= 2:
                raise KeyboardInterrupt

    runner = Runner(exp, tmp_path, out, Stopper())
    if step == "report":  # nothing reports progress there: stop in the middle of building it
        import vlm_classify.report.build as build

        real = build.compute
        calls = []

        def stop_once(*a, **k):
            if not calls:
                calls.append(1)
                raise KeyboardInterrupt
            return real(*a, **k)

        build.compute = stop_once
        try:
            with pytest.raises(KeyboardInterrupt):
                runner.run()
        finally:
            pass
    else:
        with pytest.raises(KeyboardInterrupt):
            runner.run()
    state = json.loads((out / "run.json").read_text())
    assert state["steps"][step]["status"] == "started"
    result, ui = run(path, out)
    if step == "report":
        build.compute = real
    assert result.ran[0] == step and dict((s, w) for s, a, w in ui.lines)[step].startswith(
        "interrupted before"
    )
    assert result.report is not None and result.report.is_file()
    if step.startswith("classify:"):
        arm = json.loads((out / "arms" / step.split(":")[1] / "arm.json").read_text())
        run_ = arm["last_run"]
        assert run_["requested"] + run_["skipped_already_done"] == 9  # nothing asked twice
        assert run_["skipped_already_done"] >= 2 or step == "classify:base"


def test_kill_9_during_classify_then_resume(tmp_path: Path) -> None:
    text = EXPERIMENT.replace("latency_scale = 0.01", "latency_scale = 0.3").replace(
        'mode = "batch"', 'mode = "realtime"\nconcurrency = 1'
    )
    path, out = write(tmp_path, text), tmp_path / "out"
    command = [sys.executable, "-m", "vlm_classify", "run", str(path), "--out", str(out), "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = out / "runs.sqlite"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            state = out / "run.json"
            if (
                state.is_file()
                and "classify:base" in state.read_text()
                and _answers(db, "base") >= 3
            ):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = _answers(db, "base")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "run classify:base (interrupted before: resuming)" in done.stderr
    arm = json.loads((out / "arms" / "base" / "arm.json").read_text())
    assert arm["last_run"]["skipped_already_done"] >= before >= 3
    assert arm["totals"]["answered"] == 9


def _answers(db: Path, arm: str) -> int:
    import sqlite3

    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM predictions WHERE arm = ?", (arm,)).fetchone()[
                0
            ]
    except sqlite3.Error:
        return 0


AZURE = """\
[dataset]
source = "generated"
classes = 3
split = [5, 1, 3]

[[arm]]
name = "base"
model = "azure/gpt-4o-2024-08-06"
mode = "batch"

[[arm]]
name = "ft"
finetune = { from = "azure/gpt-4o-2024-08-06", epochs = 2, lr_multiplier = 0.5, seed = 42 }
deploy = { deployment = "dogs-ft", subscription = "sub", resource_group = "rg", account = "acct" }

[latency]
arms = ["ft"]
requests = 4
concurrency = [1]

[report]
baseline = "base"
"""


@pytest.mark.parametrize("provider", ["azure", "openai"])
def test_an_experiment_runs_against_the_service_the_environment_names(
    tmp_path: Path, monkeypatch, provider: str
) -> None:
    """No [emulator] in the file: the service comes from AZURE_OPENAI_ENDPOINT (a fine-tune
    deployed through the control plane) or OPENAI_BASE_URL, here the emulator run apart."""
    from vlm_classify.emulator import Emulator, EmulatorConfig

    text = AZURE
    if provider == "openai":
        text = text.replace("azure/", "openai/").replace(
            'deploy = { deployment = "dogs-ft", subscription = "sub", resource_group = "rg", '
            'account = "acct" }\n',
            "",
        )
    path, out = write(tmp_path, text), tmp_path / "out"
    for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, "https://unused.example")  # prepare sends nothing
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    run(path, out, only="prepare")
    config = EmulatorConfig(
        manifests=[out], latency_scale=0.01, batch_seconds=0.3, ft_seconds=0.3, seed=1
    )
    with Emulator(config) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        result, _ui = run(path, out)
        assert "deploy:ft" in result.ran or provider == "openai"
        deployments = dict(emu.service.store.deployments) if provider == "azure" else {}
    steps = ["finetune:ft", *(["deploy:ft"] if provider == "azure" else [])]
    assert result.ran == [
        "estimate",
        *steps,
        "classify:base",
        "classify:ft",
        "latency:ft",
        "report",
    ]
    state = json.loads((out / "run.json").read_text())
    if provider == "azure":
        assert state["steps"]["classify:ft"]["inputs"]["model"] == "azure/dogs-ft"
        assert "dogs-ft" in deployments
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["arms"]["ft"]["fine_tuned"] and metrics["arms"]["base"]["emulated"]


def test_every_shipped_example_is_a_valid_experiment() -> None:
    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))
    assert {p.name for p in examples} >= {
        "demo.toml",
        "demo-local.toml",
        "study-azure.toml",
        "study-openai.toml",
        "open-models-1gpu.toml",
    }
    for path in examples:
        exp, _ = load_experiment(path)
        assert exp.arm


@pytest.mark.parametrize("step", [s for s in STEPS if s != "estimate"])
def test_kill_9_in_any_step_then_the_same_command_completes(tmp_path: Path, step: str) -> None:
    """kill -9 once `step` has started (no cleanup runs), then the same command: every step
    ends finished, no item is asked twice and nothing half-written is trusted."""
    text = EXPERIMENT.replace("batch_seconds = 0.3", "batch_seconds = 0.8").replace(
        "ft_seconds = 0.3", "ft_seconds = 0.8"
    )
    text = text.replace("latency_scale = 0.01", "latency_scale = 0.1")
    path, out = write(tmp_path, text), tmp_path / "out"
    command = [sys.executable, "-m", "vlm_classify", "run", str(path), "--out", str(out), "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "run.json"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                steps = json.loads(state.read_text())["steps"]
            except (OSError, ValueError, KeyError):
                steps = {}
            if step in steps:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = json.loads(state.read_text())["steps"]
    assert killed[step]["status"] in ("started", "finished")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    final = json.loads(state.read_text())["steps"]
    assert set(final) == set(STEPS) and all(s["status"] == "finished" for s in final.values())
    for arm in ("base", "ft"):
        totals = json.loads((out / "arms" / arm / "arm.json").read_text())["totals"]
        assert totals["answered"] == 9 and totals["errors"] == 0
    assert (out / "report" / "report.html").is_file()


def test_a_dataset_prepared_again_reruns_everything_on_the_new_sample(tmp_path: Path) -> None:
    path, out = write(tmp_path), tmp_path / "out"
    run(path, out)
    old_job = json.loads((out / "run.json").read_text())["steps"]["finetune:ft"]["outputs"]["job"]
    changed = EXPERIMENT.replace("split = [5, 1, 3]", 'split = [5, 1, 3]\nsampling = "random"')
    second, ui = run(write(tmp_path, changed), out)
    assert second.ran == STEPS  # every step depends on the sample
    why = {s: w for s, a, w in ui.lines if a == "run"}
    assert why["prepare"] == "changed: dataset.sampling"
    assert why["classify:base"] == "changed: sample"
    state = json.loads((out / "run.json").read_text())["steps"]
    assert state["finetune:ft"]["outputs"]["job"] != old_job  # a new job: not the old sample's
    assert (out / "arms" / old_job / "finetune.json").is_file()  # the old one is kept
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["dataset"]["compared_items"] == 9


def test_a_cloud_curve_without_yes_is_one_line_before_anything(tmp_path: Path, capsys) -> None:
    text = EXPERIMENT + '\n[curve]\nmodel = "openai/gpt-4o-2024-08-06"\nshots = [1, 2]\n'
    code, _, err = run_cli(
        ["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "add yes = true to [curve]" in err
    assert not (tmp_path / "o").exists()


def test_a_local_curve_runs_as_a_step(tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    from local_support import write_open_clip_dir

    clip = write_open_clip_dir(tmp_path / "clip")
    text = f"""
[dataset]
source = "generated"
classes = 3
split = [4, 1, 2]

[[arm]]
name = "clip-zs"
model = "clip/{clip}"
device = "cpu"

[curve]
model = "clip/{clip}"
name = "probe"
shots = [1, 2, "all"]
device = "cpu"
"""
    result, ui = run(write(tmp_path, text), tmp_path / "out")
    assert result.ran == ["prepare", "classify:clip-zs", "curve", "report"]
    doc = json.loads((tmp_path / "out" / "curves" / "probe" / "curve.json").read_text())
    assert [p["shots"] for p in doc["points"]] == [1, 2, 4]
    assert any(m.startswith("curve probe: ") for m in ui.messages)
    again, _ = run(write(tmp_path, text), tmp_path / "out")
    assert again.ran == []
