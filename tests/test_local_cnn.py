"""The `cnn/` provider: train a tiny timm CNN on generated colour images, classify with it, resume
an interrupted run, fall back to from-scratch offline, and one-line errors. Never downloads: the
hub is offline, its caches are empty temporary folders and sockets refuse to connect."""

from __future__ import annotations

import csv
import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("timm")

import huggingface_hub.constants
import safetensors.torch
import timm
from PIL import Image

from vlm_classify.backends.base import LocalSettings
from vlm_classify.backends.local import cnn, cnn_train, common
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.dataset.manifest import (
    LABELS_NAME,
    MANIFEST_NAME,
    ManifestRow,
    load_split,
    write_manifest,
)
from vlm_classify.errors import UserError
from vlm_classify.models import ModelRef
from vlm_classify.training import Epoch, TrainOptions, train_local

ARCH = "test_resnet"
"""timm's own test architecture (0.4 M parameters, 160 px): tens of images per second on one core,
and it learns colours in a few epochs from scratch from every seed tried (MobileNetV3-Small 0.5
from scratch on 36 images does not, reliably)."""
COLOURS = {"blue": (40, 60, 210), "green": (40, 190, 60), "red": (210, 40, 40)}
LABELS = sorted(COLOURS)
CPU = LocalSettings(device="cpu", batch_size=8, offline=True)


def make_colour_dir(root: Path, per_split: dict[str, int], size: int = 32) -> Path:
    """A prepared dir whose class shows in the colour of each image (with jitter and noise)."""
    rng = random.Random(0)
    rows: list[ManifestRow] = []
    for label in LABELS:
        for split, count in per_split.items():
            for i in range(count):
                base = [min(255, max(0, c + rng.randint(-30, 30))) for c in COLOURS[label]]
                img = Image.new("RGB", (size, size), tuple(base))
                px = img.load()
                for _ in range(size * size // 4):
                    x, y = rng.randrange(size), rng.randrange(size)
                    px[x, y] = tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in base)
                rel = f"images/{label}/{split}_{i}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                img.save(root / rel, "JPEG", quality=90)
                rows.append(
                    ManifestRow.for_image(
                        root, rel, id=f"{label}/{split}_{i}", split=split, label=label
                    )
                )
    write_manifest(root / MANIFEST_NAME, rows)
    (root / LABELS_NAME).write_text("".join(f"{lb}\n" for lb in LABELS), encoding="utf-8")
    return root


def _no_network(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    """Offline hub, empty weight caches, and any connection attempt fails loudly."""

    connect = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):  # not the loader's Unix sockets
            raise AssertionError(f"a cnn/ test tried to reach {address}")
        connect(self, address)

    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp / "hf"))
    mp.setenv("TORCH_HOME", str(tmp / "torch"))
    mp.setattr(socket.socket, "connect", refuse)


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_network(monkeypatch, tmp_path / "caches")


def _train(prepared: Path, name: str, epochs: int, **kw: Any) -> tuple[dict[str, Any], list[int]]:
    """train_local; the record and the epochs that actually ran."""
    ran: list[int] = []
    on_epoch = kw.pop("on_epoch", None)

    def hook(e: Epoch) -> None:
        ran.append(e.epoch)
        if on_epoch:
            on_epoch(e)

    options = TrainOptions(
        model=f"cnn/{ARCH}",
        name=name,
        epochs=epochs,
        batch_size=8,
        lr=kw.pop("lr", 3e-3),
        seed=0,
        local=kw.pop("local", CPU),
    )
    return train_local(prepared, options, hook), ran


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """3 colours x 12 train / 3 val / 4 test images, trained once for the module."""
    root = tmp_path_factory.mktemp("cnn")
    with pytest.MonkeyPatch.context() as mp:
        _no_network(mp, root / "caches")
        prepared = make_colour_dir(root / "prepared", {"train": 12, "val": 3, "test": 4})
        record, ran = _train(prepared, "cnn", epochs=5)
        assert ran == [1, 2, 3, 4, 5]
        yield prepared, record


def test_trains_from_scratch_offline_and_classifies_well(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    prepared, record = trained
    assert record["fine_tuned_model"] == "cnn/arm:cnn"
    assert [c["epoch"] for c in record["curves"]] == [1, 2, 3, 4, 5]
    assert all(c["train_loss"] > 0 and 0 <= c["val_accuracy"] <= 1 for c in record["curves"])
    details = record["details"]
    assert details["pretrained"] is False and details["pretrained_on"] is None
    assert "offline" in details["pretrained_note"] and "scratch" in details["pretrained_note"]
    assert details["architecture"] == ARCH and details["params"] > 100_000
    assert details["train_images_per_s"] > 0
    assert record["hardware"]["device"] == "cpu"
    assert "timm" in record["versions"]
    model = prepared / "arms" / "cnn" / "model"
    assert {p.name for p in model.iterdir()} == {"cnn.json", "model.safetensors"}
    card = json.loads((model / "cnn.json").read_text())
    assert card["labels"] == LABELS and card["best_epoch"] == record["best_epoch"]

    result = classify(
        prepared,
        ClassifyOptions(
            model=record["fine_tuned_model"],
            name="cnn-eval",
            local=LocalSettings(device="cpu", batch_size=8),
        ),
    )
    with (result.arm_dir / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for r in rows:
        assert r["valid"] == "1" and r["prediction"] in LABELS
        scores = json.loads(r["scores"])
        assert set(scores) == set(LABELS) and sum(scores.values()) == pytest.approx(1, abs=1e-4)
        assert float(r["confidence"]) == pytest.approx(max(scores.values()), abs=1e-5)
    assert result.totals["accuracy"] >= 0.75  # chance is 1/3
    arm = json.loads((result.arm_dir / "arm.json").read_text())
    assert arm["compute"]["device"] == "cpu" and arm["compute"]["images"] == 12
    assert arm["fine_tuned"] is True and arm["fine_tune"]["job_arm"] == "cnn"


def test_a_finished_run_rerun_does_no_work(trained: tuple[Path, dict[str, Any]]) -> None:
    prepared, record = trained
    again, ran = _train(prepared, "cnn", epochs=5)
    assert ran == []
    assert again["curves"] == record["curves"] and again["best_epoch"] == record["best_epoch"]
    with pytest.raises(UserError, match=r"already records a job of cnn/test_resnet with"):
        _train(prepared, "cnn", epochs=7)


def test_model_by_path_with_workers_and_label_mismatch(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    prepared, _ = trained
    model = prepared / "arms" / "cnn" / "model"
    settings = LocalSettings(device="cpu", workers=2)
    test, labels = load_split(prepared, "test")
    for name in (str(model), str(model.parent)):  # the model dir, or the arm that holds it
        backend = cnn.make_backend(ModelRef("cnn", name), labels, prepared, settings)
        try:
            predictions = backend.classify_batch(test[:5])
        finally:
            backend.close()
        assert [p.valid for p in predictions] == [True] * 5
    with pytest.raises(UserError, match=r"other labels .*'pink'.*'red'.* train it again") as e:
        cnn.make_backend(ModelRef("cnn", "arm:cnn"), ["blue", "green", "pink"], prepared, settings)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"no directory"):
        cnn.make_backend(ModelRef("cnn", str(prepared / "nope")), labels, prepared, settings)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    prepared = make_colour_dir(tmp_path / "prepared", {"train": 4, "val": 2, "test": 1})
    one_worker = CPU.model_copy(update={"workers": 1})  # the worker's augmentation is seeded too
    full, ran = _train(prepared, "full", epochs=3, local=one_worker)
    assert ran == [1, 2, 3]

    def stop_after_2(e: Epoch) -> None:
        if e.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(prepared, "part", epochs=3, on_epoch=stop_after_2, local=one_worker)
    model = prepared / "arms" / "part" / "model"
    assert (model / "checkpoint.pt").is_file() and not (model / "cnn.json").exists()
    with pytest.raises(UserError, match=r"did not finish .* rerun"):
        cnn.make_backend(ModelRef("cnn", "arm:part"), LABELS, prepared, CPU)
    with pytest.raises(UserError, match=r"unfinished cnn/ training run with other settings"):
        _train(prepared, "part", epochs=4, local=one_worker)

    resumed, ran = _train(prepared, "part", epochs=3, local=one_worker)
    assert ran == [3]
    assert resumed["details"]["resumed_at_epoch"] == 3
    assert not (model / "checkpoint.pt").exists() and (model / "cnn.json").is_file()
    # Each epoch is seeded from (seed, epoch): the resumed run is the uninterrupted one.
    for a, b in zip(full["curves"], resumed["curves"], strict=True):
        assert a["epoch"] == b["epoch"]
        for k in ("train_loss", "val_loss", "val_accuracy"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6)
    assert resumed["best_epoch"] == full["best_epoch"]


def test_one_line_errors(tmp_path: Path) -> None:
    prepared = make_colour_dir(tmp_path / "prepared", {"train": 2, "val": 1, "test": 1}, size=8)

    def run(model: str) -> str:
        with pytest.raises(UserError) as e:
            classify(prepared, ClassifyOptions(model=model, name="x", local=CPU))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert run("cnn/mobilenetv3_small_100") == (
        "cnn/mobilenetv3_small_100 has no zero-shot: train it first with `vlm-classify finetune "
        f"{prepared} --model cnn/mobilenetv3_small_100 --name cnn`, then classify cnn/arm:cnn"
    )
    assert "no architecture 'mobilenetv3_smal_100' (did you mean mobilenetv3_small_100" in run(
        "cnn/mobilenetv3_smal_100"
    )
    assert "no weights tagged 'bogus'" in run("cnn/mobilenetv3_small_100.bogus")
    assert "arm 'nope' holds no trained model" in run("cnn/arm:nope")
    with pytest.raises(UserError, match=r"has no architecture 'resnet_nope'"):
        train_local(prepared, TrainOptions(model="cnn/resnet_nope", name="t", local=CPU))
    with pytest.raises(UserError, match=r"finetune starts from an architecture"):
        train_local(prepared, TrainOptions(model="cnn/arm:x", name="t", local=CPU))


def test_offline_init_uses_the_local_cache_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = timm.models.get_pretrained_cfg(ARCH, allow_unregistered=False)
    _, init = cnn_train.init_model(ARCH, 3, offline=True)
    assert init.pretrained is False and "not in the local cache" in (init.note or "")

    # Put "ImageNet weights" where the hub would have cached them: used, without a connection.
    imagenet = timm.create_model(ARCH, pretrained=False)
    snapshot = (
        Path(huggingface_hub.constants.HF_HUB_CACHE)
        / f"models--{cfg.hf_hub_id.replace('/', '--')}"
        / "snapshots"
        / ("0" * 40)
    )
    snapshot.mkdir(parents=True)
    safetensors.torch.save_model(imagenet, str(snapshot / "model.safetensors"))
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    model, init = cnn_train.init_model(ARCH, 3, offline=True)
    assert init.pretrained is True and init.source == str(snapshot / "model.safetensors")
    first = next(iter(imagenet.state_dict()))
    assert model.state_dict()[first].equal(imagenet.state_dict()[first])
    assert model.get_classifier().out_features == 3

    # Training starts from them and says what they were trained on (ImageNet: the report warns
    # that such an arm may have seen Stanford Dogs' test images). Its 9 train images in batches
    # of 8 end in a batch of one, which is dropped: BatchNorm cannot train on a single image.
    sizes: list[int] = []
    loader = common.loader

    def recording(*args: Any, **kw: Any) -> Any:
        batches = loader(*args, **kw)
        if not kw.get("shuffle"):  # val
            return batches

        def each() -> Iterator[Any]:
            for images, targets in batches:
                sizes.append(len(targets))
                yield images, targets

        return each()

    monkeypatch.setattr(common, "loader", recording)
    prepared = make_colour_dir(tmp_path / "prepared", {"train": 3, "val": 1, "test": 1}, size=8)
    record, ran = _train(prepared, "imagenet", epochs=1)
    assert ran == [1] and sizes == [8]
    details = record["details"]
    assert details["pretrained"] is True and details["pretrained_on"] == "imagenet-1k"
    assert details["pretrained_source"] == str(snapshot / "model.safetensors")


def test_online_init_failure_trains_from_scratch_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = timm.create_model

    def failing(name: str, pretrained: bool = False, **kw: Any) -> Any:
        if pretrained:
            raise ConnectionError("huggingface.co unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", failing)
    model, init = cnn_train.init_model(ARCH, 3, offline=False)
    assert init.pretrained is False
    assert init.note and "ConnectionError: huggingface.co unreachable" in init.note
    assert model.get_classifier().out_features == 3


def test_a_model_named_by_its_folder_is_still_its_jobs(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    from vlm_classify.arms import find_fine_tune

    prepared, _ = trained
    for folder in (prepared / "arms" / "cnn" / "model", prepared / "arms" / "cnn"):
        record = find_fine_tune(prepared, f"cnn/{folder}")
        assert record is not None and record["job_arm"] == "cnn"  # sample check, fine_tuned
