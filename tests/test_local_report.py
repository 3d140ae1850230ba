"""Cloud and local arms in one report, as a user runs them: a chat model through the emulator, a
CLIP zero-shot and a linear probe trained here, a CNN trained here and an open VLM zero-shot by
label scoring, on the same test ids, local arms priced by compute time."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("open_clip")

from cli_support import run_cli
from local_support import colour_prepared, write_open_clip_dir, write_qwen2_vl_dir
from vlm_classify.emulator import Emulator, EmulatorConfig

LOCAL = ["--device", "cpu", "--cpu-price-per-hour", "0.36"]


def test_cloud_and_local_arms_in_one_report(tmp_path: Path, monkeypatch, capsys) -> None:
    prepared = colour_prepared(tmp_path / "p", {"train": 8, "val": 4, "test": 4})
    model = write_open_clip_dir(tmp_path / "models" / "tiny-clip")
    vlm = write_qwen2_vl_dir(tmp_path / "models" / "tiny-vlm")
    with Emulator(EmulatorConfig(manifests=[prepared], accuracy=0.5)) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        args = ["classify", str(prepared), "--model", "openai/gpt-4o-2024-08-06"]
        code, _, err = run_cli([*args, "--name", "zero-shot"], capsys)
        assert code == 0, err
    for command in (
        ["classify", str(prepared), "--model", f"clip/{model}", "--name", "clip-zs", *LOCAL],
        ["finetune", str(prepared), "--model", f"clip/{model}", "--name", "probe", *LOCAL],
        ["classify", str(prepared), "--model", "clip/arm:probe", "--name", "probe-eval", *LOCAL],
        ["classify", str(prepared), "--model", f"hf/{vlm}", "--name", "vlm-zs", *LOCAL],
        [
            "finetune",
            str(prepared),
            "--model",
            "cnn/test_resnet",
            "--name",
            "cnn",
            "--epochs",
            "2",
            "--offline",
            *LOCAL,
        ],
        ["classify", str(prepared), "--model", "cnn/arm:cnn", "--name", "cnn-eval", *LOCAL],
    ):
        code, out, err = run_cli(command, capsys)
        assert code == 0, err
    assert "images/s on cpu" in out

    code, out, err = run_cli(["report", str(prepared), "--baseline", "zero-shot"], capsys)
    assert code == 0, err
    m = json.loads((prepared / "report" / "metrics.json").read_text())
    assert set(m["arms"]) == {"zero-shot", "clip-zs", "probe-eval", "vlm-zs", "cnn-eval"}
    assert m["dataset"]["compared_items"] == 12  # the same 12 test ids for all five
    for arm in ("vlm-zs", "cnn-eval"):
        assert (
            m["arms"][arm]["mode"] == "local" and m["arms"][arm]["cost"]["price_mode"] == "compute"
        )
    assert not m["arms"]["vlm-zs"]["fine_tuned"] and m["arms"]["cnn-eval"]["fine_tuned"]
    probe = m["arms"]["probe-eval"]
    assert probe["fine_tuned"] and probe["mode"] == "local"
    with (prepared / "report" / "results.csv").open() as f:
        assert "probe-eval.prediction" in f.readline()
    with (prepared / "arms" / "probe-eval" / "predictions.csv").open(newline="") as f:
        scores = [json.loads(r["scores"]) for r in csv.DictReader(f)]
    assert len(scores) == 12  # a full distribution for every test item
    assert all(set(s) == {"Beagle", "Chihuahua", "Golden Retriever"} for s in scores)
    assert all(sum(s.values()) == pytest.approx(1, abs=1e-4) for s in scores)
    assert probe["accuracy"] > m["arms"]["clip-zs"]["accuracy"]  # colours: the probe learns them
    cost = probe["cost"]
    assert cost["price_mode"] == "compute" and cost["error"] is None
    ips = probe["compute"]["images_per_s"]
    assert cost["per_image"] == pytest.approx(0.36 / 3600 / ips)
    job = json.loads((prepared / "arms" / "probe" / "finetune.json").read_text())
    # training costs what the job takes from scratch: the fits plus embedding train and val
    assert cost["training_usd"] == pytest.approx(0.36 * job["compute_s"] / 3600)
    assert job["compute_s"] > sum(e["seconds"] for e in job["curves"])
    # every image of probe-eval was in the embedding cache: it is priced by what encoding took,
    # not by the cache lookups (which run thousands of times faster)
    zs_speed = m["arms"]["clip-zs"]["compute"]["images_per_s"]
    assert 0.1 < ips / zs_speed < 10
    assert "probe-eval" in m["cost"]["break_even"] and "clip-zs" in m["cost"]["break_even"]
    plots = {p.name for p in (prepared / "report" / "plots").iterdir()}
    assert "training-probe-eval.png" in plots  # the probe's curve over C, from curves.csv
    html = (prepared / "report" / "report.html").read_text()
    assert "compute time" in html and "probe-eval" in html
