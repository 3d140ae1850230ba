"""The local half of the architecture, without a model: the provider registry, local arms
priced by compute time, class distributions in the report, and the ImageNet caveat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_prepared_dir
from report_support import write_arm, wrong
from vlm_classify.backends.base import prediction_from_scores
from vlm_classify.backends.registry import PROVIDERS, Provider, parse
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.cost import ArmUsage, ComputeUsage, arm_cost
from vlm_classify.errors import UserError
from vlm_classify.pricing import load_pricing
from vlm_classify.report import ReportOptions, compute

LABELS = ["Beagle", "Chihuahua", "Pug", "Shih-Tzu"]


def test_model_strings_name_their_provider() -> None:
    ref, provider = parse("clip/ViT-B-32@laion2b_s34b_b79k")
    assert (ref.name, provider.kind) == ("ViT-B-32@laion2b_s34b_b79k", "local")
    assert parse("azure/dogs-ft")[1].kind == "remote"
    with pytest.raises(UserError, match="openai, azure, clip, cnn"):
        parse("hf2/some-model")


def test_a_missing_package_is_one_line_naming_the_extra() -> None:
    provider = Provider(
        "toy", "local", "vlm_classify.nothing", needs=("no_such_pkg_xyz",), extra="local"
    )
    with pytest.raises(UserError, match=r"no_such_pkg_xyz.*pip install 'vlm-classify\[local\]'"):
        provider.load()
    # the shipped local providers need only what the `local` extra installs
    assert {p.extra for p in PROVIDERS.values() if p.kind == "local"} == {"local"}


def test_local_models_refuse_the_batch_api_mode(tmp_path: Path) -> None:
    root = make_prepared_dir(tmp_path / "p", LABELS, {"train": 1, "test": 1}, size=(16, 12))
    with pytest.raises(UserError, match="--mode batch is the Batch API"):
        classify(root, ClassifyOptions(model="clip/x@y", name="clip", mode="batch"))


def test_a_distribution_becomes_a_prediction() -> None:
    p = prediction_from_scores(["a", "b", "c"], [0.2, 0.5, 0.3])
    assert (p.prediction, p.valid, p.confidence) == ("b", True, 0.5)
    assert p.scores == {"a": 0.2, "b": 0.5, "c": 0.3}
    with pytest.raises(ValueError):
        prediction_from_scores(["a"], [0.5, 0.5])


def test_compute_time_cost_by_hand() -> None:
    usage = ArmUsage(
        name="cnn",
        model="cnn/arm:cnn-job",
        mode="local",
        fine_tuned=True,
        images=100,
        prompt_tokens=0,
        completion_tokens=0,
        accuracy=0.8,
        compute=ComputeUsage("cpu", 50.0, 0.36, training_s=1800, training_price_per_hour=2.0),
    )
    c = arm_cost(usage, load_pricing(None), "batch")
    assert c["error"] is None and c["price_mode"] == "compute"
    assert c["per_image"] == pytest.approx(0.36 / 3600 / 50)
    assert c["training_usd"] == pytest.approx(1.0)  # half an hour at $2/h
    assert c["hosting_per_hour"] == 0.0
    assert c["per_correct"] == pytest.approx(c["per_image"] / 0.8)
    unpriced = arm_cost(
        ArmUsage(
            "cnn",
            "cnn/arm:x",
            "local",
            False,
            10,
            0,
            0,
            0.5,
            compute=ComputeUsage("cuda", 9.0, None),
        ),
        load_pricing(None),
    )
    assert "--gpu-price-per-hour" in unpriced["error"]


@pytest.fixture
def cloud_and_local(tmp_path: Path) -> Path:
    """A zero-shot chat arm and a local CNN fine-tuned from ImageNet weights, with distributions."""
    root = make_prepared_dir(tmp_path / "p", LABELS, {"train": 1, "test": 6}, size=(16, 12))
    write_arm(
        root, "zero-shot", lambda i, label, labels: wrong(label, labels) if i % 3 == 0 else label
    )
    job = root / "arms" / "cnn-job"
    job.mkdir(parents=True)
    (job / "finetune.json").write_text(
        json.dumps(
            {
                "base_model": "cnn/mobilenetv3_small_100",
                "fine_tuned_model": "cnn/arm:cnn-job",
                "wall_s": 3600.0,
                "hardware": {"device": "cpu", "price_per_hour": 0.5},
                "details": {"pretrained_on": "imagenet-1k"},
            }
        )
    )

    def dist(i: int, label: str, labels: list[str]) -> dict[str, float]:
        guess = wrong(label, labels) if i % 4 == 0 else label
        second = label if guess != label else wrong(label, labels, 2)
        out = dict.fromkeys(labels, 0.05)
        out[guess], out[second] = 0.7, 0.15
        return out

    write_arm(
        root,
        "cnn",
        lambda i, label, labels: max(dist(i, label, labels).items(), key=lambda kv: kv[1])[0],
        model="cnn/arm:cnn-job",
        mode="local",
        prompt_tokens=0,
        completion_tokens=0,
        scores=dist,
        extra={
            "fine_tuned": True,
            "fine_tune": {"job_arm": "cnn-job", "base_model": "cnn/mobilenetv3_small_100"},
            "compute": {"device": "cpu", "images_per_s": 40.0, "price_per_hour": 0.36},
        },
    )
    return root


def test_the_report_prices_a_local_arm_by_compute_time(cloud_and_local: Path) -> None:
    m, _ = compute(cloud_and_local, ReportOptions(baseline="zero-shot", volume=1e6))
    c = m["arms"]["cnn"]["cost"]
    assert c["price_mode"] == "compute" and c["error"] is None
    assert c["per_image"] == pytest.approx(0.36 / 3600 / 40)
    assert c["training_usd"] == pytest.approx(0.5)  # an hour at the recorded $0.50/h
    assert "cnn" in m["cost"]["break_even"]
    again, _ = compute(
        cloud_and_local, ReportOptions(baseline="zero-shot", cpu_price_per_hour=0.72)
    )
    assert again["arms"]["cnn"]["cost"]["per_image"] == pytest.approx(2 * c["per_image"])


def test_distributions_give_top_k_and_imagenet_pretraining_is_flagged(
    cloud_and_local: Path,
) -> None:
    m, _ = compute(cloud_and_local, ReportOptions(baseline="zero-shot"))
    cnn = m["arms"]["cnn"]
    # the true label is first or second in every distribution: top-3 is perfect, top-1 is not
    assert cnn["top_k"]["top_3"] == 1.0 and cnn["accuracy"] < 1.0
    assert m["arms"]["zero-shot"]["top_k"] is None  # a chat arm gives one label
    assert m["dataset"]["imagenet_ids"] is True
    seen = [t for t in m["verdict"]["text"] if t.startswith("Seen in pretraining")]
    assert len(seen) == 1 and "cnn" in seen[0]


def test_the_report_scores_the_test_split_only(cloud_and_local: Path) -> None:
    arm_json = cloud_and_local / "arms" / "cnn" / "arm.json"
    doc = json.loads(arm_json.read_text())
    doc["split"] = "train"
    arm_json.write_text(json.dumps(doc))
    with pytest.raises(
        UserError, match="run on the train split: the report scores test items only"
    ):
        compute(cloud_and_local, ReportOptions(baseline="zero-shot"))


def test_a_price_that_is_not_a_number_is_a_usage_error(cloud_and_local: Path, capsys) -> None:
    from cli_support import run_cli

    args = ["classify", str(cloud_and_local), "--model", "clip/x@y", "--name", "a"]
    code, _, err = run_cli([*args, "--cpu-price-per-hour", "inf"], capsys)
    assert code == 2 and "not a finite number" in err and "Traceback" not in err


def test_an_error_from_a_loader_worker_is_shown_as_its_own_line() -> None:
    from vlm_classify.cli import _one_line

    wrapped = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\nvlm_classify.errors.UserError: cannot read a.jpg '
        "(truncated): rerun `vlm-classify prepare`\n"
    )
    assert _one_line(wrapped) == "cannot read a.jpg (truncated): rerun `vlm-classify prepare`"
    assert _one_line(UserError("plain")) == "plain"


@pytest.mark.parametrize(
    ("model", "flag", "kind"),
    [
        ("openai/gpt-4o-2024-08-06", ["--device", "cpu"], "clip/, cnn/, hf/ models"),
        ("openai/gpt-4o-2024-08-06", ["--templates", "t.json"], "clip/ models"),
        ("cnn/arm:cnn", ["--templates", "t.json"], "clip/ models"),
        ("clip/x@y", ["--concurrency", "4"], "azure/, openai/ models"),
        ("cnn/arm:cnn", ["--rpm", "30"], "azure/, openai/ models"),
        ("clip/x@y", ["--prompt", "short"], "azure/, hf/, openai/ models"),
    ],
)
def test_an_option_the_model_does_not_use_is_refused(
    cloud_and_local: Path, capsys, model: str, flag: list[str], kind: str
) -> None:
    from cli_support import run_cli

    args = ["classify", str(cloud_and_local), "--model", model, "--name", "a", *flag]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and f"{flag[0]} is for {kind}" in err and "Traceback" not in err
