"""`vlm-classify sensitivity`: a zero-shot model asked with the label list in several orders on
one seeded subsample; the spread and agreement equal a recount of its arms, the prompts really
list the labels in other orders, and the report shows it apart from the main comparison."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

from sklearn.metrics import cohen_kappa_score

from cli_support import run_cli
from vlm_classify.store import Store


def test_label_orders_against_the_emulator(tmp_path: Path, capsys, monkeypatch) -> None:
    from vlm_classify.emulator import Emulator, EmulatorConfig

    source, prepared = tmp_path / "src", tmp_path / "p"
    assert run_cli(["sample", str(source), "--classes", "5", "--per-class", "12"], capsys)[0] == 0
    code, _, err = run_cli(
        ["prepare", str(source), "--out", str(prepared), "--split", "2,2,8"], capsys
    )
    assert code == 0, err
    with Emulator(EmulatorConfig(manifests=[prepared], latency_scale=0.0, accuracy=0.6)) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        args = ["sensitivity", str(prepared), "--model", "openai/gpt-4o-2024-08-06", "--name", "zs"]
        code, out, err = run_cli([*args, "--orders", "2", "--items", "20"], capsys)
        assert code == 0, err
        assert run_cli(["classify", str(prepared), "--model", "openai/gpt-4o-2024-08-06",
                        "--name", "zero-shot"], capsys)[0] == 0  # fmt: skip
    doc = json.loads((prepared / "sensitivity" / "zs.json").read_text())
    assert doc["arms"] == ["zs.order0", "zs.order1", "zs.order2"] and doc["items"] == 20
    with Store.for_dir(prepared) as store:
        answers = {a: {p.item_id: p for p in store.predictions(a)} for a in doc["arms"]}
    ids = sorted(answers["zs.order0"])
    assert len(ids) == 20 and all(sorted(answers[a]) == ids for a in doc["arms"])
    accs = [sum(answers[a][i].correct for i in ids) / 20 for a in doc["arms"]]
    assert [doc["accuracy"][a] for a in doc["arms"]] == accs
    assert doc["accuracy_sd"] == statistics.stdev(accs)
    labels = {a: [answers[a][i].result.prediction or "-" for i in ids] for a in doc["arms"]}
    same = sum(len({labels[a][k] for a in doc["arms"]}) == 1 for k in range(20)) / 20
    assert doc["all_orders_agree"] == same
    kappa = statistics.fmean(
        cohen_kappa_score(labels[a], labels[b]) for a, b in itertools.combinations(doc["arms"], 2)
    )
    assert abs(doc["mean_pairwise_kappa"] - kappa) < 1e-9
    assert doc["summary"] in out and doc["emulated"]
    arm = json.loads((prepared / "arms" / "zs.order1" / "arm.json").read_text())
    assert arm["settings"]["label_order"] == 1
    code, _, err = run_cli(["report", str(prepared)], capsys)
    assert code == 0, err
    m = json.loads((prepared / "report" / "metrics.json").read_text())
    assert set(m["arms"]) == {"zero-shot"}  # the study's arms are reported on their own
    (orders,) = m["decide"]["label_orders"]
    assert orders["summary"] == doc["summary"]
    assert "Label order, zs" in (prepared / "report" / "report.html").read_text()


def test_a_model_without_a_label_list_is_refused(tmp_path: Path, capsys) -> None:
    from local_support import colour_prepared

    prepared = colour_prepared(tmp_path / "p", {"train": 2, "val": 1, "test": 2})
    code, _, err = run_cli(
        ["sensitivity", str(prepared), "--model", "cnn/arm:x", "--name", "s"], capsys
    )
    assert code == 1 and "does not list the labels" in err
