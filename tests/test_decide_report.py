"""The report's section on deciding with fewer images: a learning curve and an arm that stopped
early are reported on their own (not in the main comparison), with what stopping saved, every
number traceable to the arms' records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_support import run_cli

pytest.importorskip("open_clip")


def test_curves_and_stopped_arms_have_their_own_section(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from local_support import colour_prepared, write_open_clip_dir
    from vlm_classify.emulator import Emulator, EmulatorConfig

    prepared = colour_prepared(tmp_path / "p", {"train": 4, "val": 2, "test": 40}, noise=200)
    clip = write_open_clip_dir(tmp_path / "clip")
    config = EmulatorConfig(
        manifests=[prepared], latency_scale=0.0, accuracy=0.95, model_accuracy={"gpt-4o-mini": 0.3}
    )
    with Emulator(config) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        base = ["classify", str(prepared), "--name"]
        assert run_cli([*base, "mini", "--model", "openai/gpt-4o-mini"], capsys)[0] == 0
        code, _, err = run_cli(
            [
                *base,
                "big",
                "--model",
                "openai/gpt-4o-2024-08-06",
                "--until-decided",
                "--against",
                "mini",
                "--concurrency",
                "2",
            ],
            capsys,
        )
        assert code == 0, err
    args = ["curve", str(prepared), "--model", f"clip/{clip}", "--name", "probe"]
    code, _, err = run_cli([*args, "--shots", "1,2,all", "--device", "cpu"], capsys)
    assert code == 0, err
    assert run_cli(["classify", str(prepared), "--model", f"clip/{clip}", "--name", "clip-zs",
                    "--device", "cpu"], capsys)[0] == 0  # fmt: skip

    code, _, err = run_cli(["report", str(prepared), "--baseline", "mini"], capsys)
    assert code == 0, err
    m = json.loads((prepared / "report" / "metrics.json").read_text())
    assert set(m["arms"]) == {"mini", "clip-zs"}  # the curve's arms and big are on their own
    d = m["decide"]
    (curve,) = d["curves"]
    saved_doc = json.loads((prepared / "curves" / "probe" / "curve.json").read_text())
    assert curve["points"] == saved_doc["points"] and curve["summary"] == saved_doc["summary"]
    (stopped,) = d["stopped_early"]
    rec = json.loads((prepared / "arms" / "big" / "arm.json").read_text())["until_decided"]
    assert stopped["arm"] == "big" and stopped["decision"] == rec["decision"] == "better"
    assert stopped["unasked"] == rec["unasked"] > 0
    assert stopped["saved_usd"] == pytest.approx(stopped["per_image_usd"] * rec["unasked"])
    assert stopped["per_image_usd"] > 0
    html = (prepared / "report" / "report.html").read_text()
    assert "Fewer labelled images, fewer test images" in html
    assert f"big (emulated) stopped after {rec['answered']} of {rec['items']} test items" in html
    assert "Learning curve probe" in html
    assert (prepared / "report" / "plots" / "curve-probe.png").is_file()
    assert "plots/curve-probe.png" in (prepared / "report" / "report.md").read_text()
