"""The `clip/` provider on tiny models built here from configs (random weights, nothing downloaded):
zero-shot end to end, batched == per image, the embedding cache, a linear probe that learns, and
the one-line errors."""

from __future__ import annotations

import csv
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("open_clip")

import open_clip
import torch
from safetensors.torch import save_file

from local_support import (
    LABELS,
    TINY_OPEN_CLIP,
    colour_prepared,
    write_open_clip_dir,
    write_transformers_dir,
)
from vlm_classify.backends.base import LocalSettings
from vlm_classify.backends.local import clip
from vlm_classify.backends.local.embeddings import EmbeddingCache, cache_folder
from vlm_classify.backends.local.probe import C_GRID, PROBE_JSON, probe_head
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.dataset.manifest import (
    load_sample,
)
from vlm_classify.errors import UserError
from vlm_classify.models import ModelRef
from vlm_classify.training import TrainOptions, train_local

CPU = LocalSettings(device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_open_clip_dir(tmp_path_factory.mktemp("models") / "tiny-open-clip")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_transformers_dir(tmp_path_factory.mktemp("models") / "tiny-hf-clip")


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return colour_prepared(tmp_path / "prepared", {"train": 8, "val": 4, "test": 4})


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the batches that went through an image encoder."""
    calls: list[int] = []
    original = clip.Encoder.encode_images

    def counting(self: clip.Encoder, pixels: torch.Tensor) -> np.ndarray:
        calls.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(clip.Encoder, "encode_images", counting)
    return calls


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a connection fails the test."""

    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def read_predictions(arm: Path) -> list[dict[str, str]]:
    with (arm / "predictions.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def accuracy(rows: list[dict[str, str]]) -> float:
    return sum(r["prediction"] == r["label"] for r in rows) / len(rows)


def zero_shot(prepared: Path, model: Path | str, name: str = "clip-zs", **kw: Any) -> Path:
    options = ClassifyOptions(model=f"clip/{model}", name=name, local=CPU, **kw)
    return classify(prepared, options).arm_dir


# --- zero-shot -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["open_clip", "transformers"])
def test_zero_shot_end_to_end_writes_full_distributions(
    kind: str, prepared: Path, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue("oc_dir" if kind == "open_clip" else "hf_dir")
    arm = zero_shot(prepared, model)
    rows = read_predictions(arm)
    assert len(rows) == len(LABELS) * 4
    for r in rows:
        scores = json.loads(r["scores"])
        assert set(scores) == set(LABELS)
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert r["prediction"] == max(scores, key=scores.__getitem__)
        assert r["valid"] in ("1", "True", "true")
    record = json.loads((arm / "arm.json").read_text(encoding="utf-8"))
    assert record["compute"]["device"] == "cpu"
    assert ("open_clip" if kind == "open_clip" else "transformers") in record["compute"]["versions"]


@pytest.mark.parametrize("kind", ["open_clip", "transformers"])
def test_batched_equals_per_image(
    kind: str, prepared: Path, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue("oc_dir" if kind == "open_clip" else "hf_dir")
    items = load_sample(prepared).split("test")
    labels = load_sample(prepared).labels
    ref = ModelRef("clip", str(model))
    batched = clip.make_backend(ref, labels, prepared, CPU.model_copy(update={"batch_size": 32}))
    together = batched.classify_batch(items)
    assert batched.embedder.computed == len(items)
    # A second prepared folder has no cache: every image goes through the encoder alone.
    alone = clip.make_backend(ref, labels, prepared, CPU.model_copy(update={"batch_size": 1}))
    alone.embedder.cache = EmbeddingCache(prepared / "other-cache")
    one_by_one = [alone.classify_batch([it])[0] for it in items]
    assert alone.embedder.computed == len(items)
    for a, b in zip(together, one_by_one, strict=True):
        assert a.prediction == b.prediction
        assert a.scores is not None and b.scores is not None
        for label in labels:
            assert a.scores[label] == pytest.approx(b.scores[label], abs=1e-4)


def test_templates_override_and_validation(tmp_path: Path, prepared: Path, oc_dir: Path) -> None:
    from vlm_classify.backends.local.templates import load_templates, templates_identity

    shipped = load_templates()
    assert "a photo of a {}." in shipped and all(t.count("{}") == 1 for t in shipped)
    custom = tmp_path / "t.json"
    custom.write_text(json.dumps(["a {} dog."]), encoding="utf-8")
    assert load_templates(custom) == ["a {} dog."]
    assert templates_identity(custom) != templates_identity(None)
    # an arm is bound to its templates: resuming it with others is refused
    classify(prepared, ClassifyOptions(model=f"clip/{oc_dir}", name="zs", local=CPU, limit=2))
    with pytest.raises(UserError, match="keep those settings"):
        classify(
            prepared,
            ClassifyOptions(
                model=f"clip/{oc_dir}",
                name="zs",
                local=CPU.model_copy(update={"templates": custom}),
            ),
        )
    custom.write_text(json.dumps(["no placeholder"]), encoding="utf-8")
    with pytest.raises(UserError, match="one \\{\\} for the label"):
        load_templates(custom)


# --- the embedding cache -------------------------------------------------------------------


def test_cache_spares_the_encoder_for_reruns_probes_and_probe_reruns(
    prepared: Path, oc_dir: Path, encodes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    n = {s: len(load_sample(prepared).split(s)) for s in ("train", "val", "test")}
    zero_shot(prepared, oc_dir, "zs-a")
    assert sum(encodes) == n["test"]
    zero_shot(prepared, oc_dir, "zs-b")  # another arm (e.g. other templates): all cached
    assert sum(encodes) == n["test"]
    record = train_local(prepared, TrainOptions(model=f"clip/{oc_dir}", name="probe", local=CPU))
    assert sum(encodes) == n["test"] + n["train"] + n["val"]
    assert record["details"]["embeddings"] == {"computed": n["train"] + n["val"], "cached": 0}
    loads: list[str] = []
    load = clip._load_open_clip
    monkeypatch.setattr(clip, "_load_open_clip", lambda s, *a: loads.append(s.name) or load(s, *a))
    train_local(prepared, TrainOptions(model=f"clip/{oc_dir}", name="probe", local=CPU))
    zero_shot(prepared, "arm:probe", "probe-eval")
    assert sum(encodes) == n["test"] + n["train"] + n["val"]  # nothing new after the first pass
    assert loads == []  # every embedding was cached: the weights were not even loaded


def test_cache_key_changes_with_the_weights(prepared: Path, tmp_path: Path) -> None:
    model = write_open_clip_dir(tmp_path / "m", seed=1)
    first = clip.load_encoder(clip.parse_name(str(model)), torch.device("cpu"), False)
    time.sleep(0.01)
    torch.manual_seed(2)
    save_file(open_clip.CLIP(**TINY_OPEN_CLIP).state_dict(), model / "open_clip_model.safetensors")
    second = clip.load_encoder(clip.parse_name(str(model)), torch.device("cpu"), False)
    assert first.key != second.key
    assert cache_folder(prepared, first.key) != cache_folder(prepared, second.key)


def test_cache_survives_a_torn_chunk_and_merges_many(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    cache = EmbeddingCache(folder)
    for i in range(EmbeddingCache.MAX_CHUNKS + 2):
        cache.add([f"{i:064x}"], np.full((1, 4), i, np.float32))
    (folder / "torn.npz").write_bytes(b"PK\x03\x04 not a whole file")
    (folder / ".x.tmp").write_bytes(b"half written")
    again = EmbeddingCache(folder)
    assert len(again) == EmbeddingCache.MAX_CHUNKS + 2
    assert again.get(f"{5:064x}").tolist() == [5.0] * 4
    assert len(list(folder.glob("*.npz"))) == 1


# --- the linear probe ----------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
def test_probe_head_reproduces_scikit_learn(classes: int) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = np.arange(60) % classes
    clf = LogisticRegression().fit(x, y)
    head = probe_head(clf, classes)
    np.testing.assert_allclose(head.probs(x), clf.predict_proba(x), atol=1e-5)


def test_probe_learns_colours_that_zero_shot_cannot(tmp_path: Path, oc_dir: Path) -> None:
    prepared = colour_prepared(tmp_path / "p", {"train": 12, "val": 6, "test": 10})
    zs = accuracy(read_predictions(zero_shot(prepared, oc_dir, "zs")))
    epochs: list[Any] = []
    record = train_local(
        prepared,
        TrainOptions(model=f"clip/{oc_dir}", name="probe", local=CPU),
        on_epoch=epochs.append,
    )
    assert len(record["curves"]) == len(C_GRID) == len(epochs)
    assert record["fine_tuned_model"] == "clip/arm:probe"
    assert record["best_epoch"] in [e["epoch"] for e in record["curves"]]
    assert record["details"]["C"] in C_GRID
    saved = json.loads((prepared / "arms/probe/model" / PROBE_JSON).read_text("utf-8"))
    assert saved["labels"] == LABELS and saved["base_model"] == f"clip/{oc_dir}"
    probe = accuracy(read_predictions(zero_shot(prepared, "arm:probe", "probe-eval")))
    assert probe >= 0.8
    assert probe >= zs + 0.3, (probe, zs)


def test_probe_labels_must_match(prepared: Path, oc_dir: Path) -> None:
    train_local(prepared, TrainOptions(model=f"clip/{oc_dir}", name="probe", local=CPU))
    with pytest.raises(UserError, match=r"other labels than labels\.txt"):
        clip.make_backend(ModelRef("clip", "arm:probe"), [*LABELS[:2], "Poodle"], prepared, CPU)


# --- names and one-line errors -------------------------------------------------------------


def test_parse_name_forms(oc_dir: Path, hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = clip.parse_name
    assert p("ViT-B-32@laion2b_s34b_b79k") == clip.Source("tag", "ViT-B-32", "laion2b_s34b_b79k")
    assert p("hf-hub:timm/ViT-B-16-SigLIP").kind == "open_clip_hub"
    assert p("openai/clip-vit-base-patch32") == clip.Source(
        "hf_hub", "openai/clip-vit-base-patch32"
    )
    assert p("arm:probe") == clip.Source("arm", "probe")
    assert p(str(oc_dir)) == clip.Source("open_clip_dir", str(oc_dir.resolve()))
    assert p(str(hf_dir)).kind == "hf_dir"
    monkeypatch.chdir(oc_dir.parent)
    assert p(f"./{oc_dir.name}").ident == str(oc_dir.resolve())


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("ViT-B-32", "names no weights: write clip/ViT-B-32@TAG, TAG one of"),
        ("ViT-B-32@nope", "no pretrained tag 'nope'"),
        ("Not-A-Model@x", "no architecture 'Not-A-Model'"),
        ("what?", "not an open_clip NAME@TAG"),
        ("./no/such/dir", "no folder"),
        ("hf-hub:", "write clip/hf-hub:ORG/REPO"),
    ],
)
def test_bad_names_are_one_line(name: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as e:
        clip.parse_name(name)
    assert "\n" not in str(e.value)


def test_folder_without_weights_or_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match=r"neither open_clip_config\.json"):
        clip.parse_name(str(tmp_path / "a"))
    (tmp_path / "a" / "open_clip_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match="no weights"):
        clip.parse_name(str(tmp_path / "a"))


@pytest.mark.parametrize(
    "name",
    ["ViT-B-32@laion2b_s34b_b79k", "hf-hub:nobody-here/no-such-clip", "nobody-here/no-such-clip"],
)
def test_offline_uncached_hub_models_fail_fast_without_the_network(
    name: str,
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: None,
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="not in the local Hugging Face cache") as e:
        zero_shot(prepared, name)
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(e.value) and "hf download" in str(e.value)


@pytest.mark.parametrize("kind", ["open_clip", "transformers"])
def test_offline_cached_hub_models_load_without_the_network(
    kind: str,
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    no_network: None,
) -> None:
    """A hub model in the Hugging Face cache (laid out as the hub client writes it) loads with
    HF_HUB_OFFLINE=1, and its snapshot's commit names its embeddings."""
    from huggingface_hub import constants

    source = request.getfixturevalue("oc_dir" if kind == "open_clip" else "hf_dir")
    repo = "someone/tiny-clip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--someone--tiny-clip" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        # open_clip looks for its hub weights under open_clip_pytorch_model.*
        oc_weights = kind == "open_clip" and f.suffix == ".safetensors"
        name = "open_clip_pytorch_model.safetensors" if oc_weights else f.name
        (snapshot / name).write_bytes(f.read_bytes())
    (cache / "models--someone--tiny-clip" / "refs").mkdir()
    (cache / "models--someone--tiny-clip" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = f"hf-hub:{repo}" if kind == "open_clip" else repo
    encoder = clip.load_encoder(clip.parse_name(name), torch.device("cpu"), offline=True)
    assert encoder.identity.endswith(f"{repo}@{commit}")
    rows = read_predictions(zero_shot(prepared, name))
    assert len(rows) == len(LABELS) * 4


def test_a_transformers_folder_that_is_not_clip(prepared: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="'bert' model, not a CLIP-style dual encoder"):
        zero_shot(prepared, tmp_path / "bert")


def test_unknown_arm_is_one_line(prepared: Path) -> None:
    with pytest.raises(UserError, match="arm 'nope' holds no trained model") as e:
        zero_shot(prepared, "arm:nope")
    assert "\n" not in str(e.value)


def test_probe_options_that_do_not_apply(prepared: Path, oc_dir: Path) -> None:
    with pytest.raises(UserError, match="--epochs and --lr do not apply"):
        train_local(prepared, TrainOptions(model=f"clip/{oc_dir}", name="p", epochs=3, local=CPU))


# --- reruns: what an arm records stays true ------------------------------------------------


def _compute(prepared: Path, arm: str) -> dict[str, Any]:
    return json.loads((prepared / "arms" / arm / "arm.json").read_text())["compute"]


def test_a_rerun_with_nothing_to_do_keeps_the_speed_and_price(prepared: Path, oc_dir: Path) -> None:
    priced = CPU.model_copy(update={"cpu_price_per_hour": 0.5})
    classify(prepared, ClassifyOptions(model=f"clip/{oc_dir}", name="zs", local=priced))
    first = _compute(prepared, "zs")
    assert first["images_per_s"] and first["price_per_hour"] == 0.5
    classify(prepared, ClassifyOptions(model=f"clip/{oc_dir}", name="zs", local=CPU))
    again = _compute(prepared, "zs")
    assert again["images"] == 0  # nothing was classified again
    assert again["images_per_s"] == first["images_per_s"] and again["price_per_hour"] == 0.5


def test_a_model_trained_again_is_not_mixed_into_an_arm(
    prepared: Path, oc_dir: Path, tmp_path: Path
) -> None:
    train_local(prepared, TrainOptions(model=f"clip/{oc_dir}", name="probe", local=CPU))
    classify(prepared, ClassifyOptions(model="clip/arm:probe", name="eval", local=CPU, limit=2))
    other = write_open_clip_dir(tmp_path / "other", seed=1)
    with pytest.raises(UserError, match="already records a job"):
        train_local(prepared, TrainOptions(model=f"clip/{other}", name="probe", local=CPU))
    (prepared / "arms" / "probe" / "model" / PROBE_JSON).touch()  # its files are not the same
    with pytest.raises(UserError, match="keep those settings"):
        classify(prepared, ClassifyOptions(model="clip/arm:probe", name="eval", local=CPU))


def test_reset_deletes_nothing_when_the_model_does_not_load(prepared: Path, oc_dir: Path) -> None:
    classify(prepared, ClassifyOptions(model=f"clip/{oc_dir}", name="zs", local=CPU))
    before = read_predictions(prepared / "arms" / "zs")
    with pytest.raises(UserError, match="holds no trained model"):
        classify(prepared, ClassifyOptions(model="clip/arm:typo", name="zs", local=CPU, reset=True))
    assert read_predictions(prepared / "arms" / "zs") == before
