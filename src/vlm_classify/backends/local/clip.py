"""`clip/` models: CLIP-style dual encoders (open_clip or transformers: CLIP, SigLIP...), zero-shot
over a prompt-template ensemble, or a linear probe trained on their image embeddings.

The model name (after `clip/`) is one of:
  `ViT-B-32@laion2b_s34b_b79k`    an open_clip architecture and pretrained tag
  `hf-hub:timm/ViT-B-16-SigLIP`   an open_clip model on the Hugging Face hub
  `openai/clip-vit-base-patch32`  a transformers model on the Hugging Face hub
  `./models/x`, `/abs/path`       a folder: open_clip (`open_clip_config.json` + weights) or
                                  transformers (`config.json` + weights + processor files)
  `arm:NAME`                      the linear probe trained by arm NAME (`finetune`)

This module holds what is CLIP's own: the names, loading (offline checks, the hub's cache), the
`Encoder` and its zero-shot head, and the provider's `make_backend` / `make_trainer`. Image
embeddings go through the on-disk cache of `embeddings` (other templates, a probe or a rerun cost
no image-encoder pass); the probe's training and files are `probe`'s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...dataset.manifest import ManifestRow
from ...errors import UserError
from ...models import ModelRef
from ...training import ARM_PREFIX, TrainOptions, resolve_arm_model
from ..base import LocalSettings, Prediction, prediction_from_scores
from . import common
from .embeddings import Embedder, Head
from .probe import ProbeTrainer, load_probe
from .templates import load_templates

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_WEIGHTS = ("*.safetensors", "*.bin", "*.pth", "*.pt", "*.npz")
Kind = Literal["tag", "open_clip_hub", "open_clip_dir", "hf_hub", "hf_dir", "arm"]


# --- model names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a `clip/` model comes from."""

    kind: Kind
    ident: str
    """The open_clip architecture, the hub repo, the absolute folder, or the arm's name."""
    tag: str = ""
    """The open_clip pretrained tag (`kind == "tag"`)."""

    @property
    def name(self) -> str:
        """The canonical name after `clip/` (folders absolute, so it holds from any cwd)."""
        if self.kind == "tag":
            return f"{self.ident}@{self.tag}"
        if self.kind == "open_clip_hub":
            return f"hf-hub:{self.ident}"
        if self.kind == "arm":
            return f"{ARM_PREFIX}{self.ident}"
        return self.ident


def parse_name(name: str) -> Source:
    """The source a `clip/` model name stands for; a name that cannot work is one clear line."""
    if name.startswith(ARM_PREFIX):
        return Source("arm", name[len(ARM_PREFIX) :])
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:") :]
        if not _HUB_ID.fullmatch(repo):
            raise UserError(f"clip/{name}: write clip/hf-hub:ORG/REPO (an open_clip hub model)")
        return Source("open_clip_hub", repo)
    path = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) or path.is_dir():
        return _folder_source(name, path)
    import open_clip

    if "@" in name:
        arch, _, tag = name.partition("@")
        return _tag_source(open_clip, arch, tag)
    if _HUB_ID.fullmatch(name):
        return Source("hf_hub", name)
    if name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if not tags:
            raise UserError(
                f"clip/{name}: open_clip has no pretrained weights for {name} (random weights "
                "classify nothing); open_clip.list_pretrained() lists the NAME@TAG pairs"
            )
        raise UserError(
            f"clip/{name} names no weights: write clip/{name}@TAG, TAG one of {_few(tags)} "
            "(open_clip.list_pretrained() lists them all)"
        )
    raise UserError(
        f"clip/{name}: not an open_clip NAME@TAG (e.g. clip/ViT-B-32@laion2b_s34b_b79k), "
        "hf-hub:ORG/REPO, Hugging Face ORG/NAME, folder (clip/./dir, clip//abs/dir) or arm:NAME"
    )


def _tag_source(open_clip: Any, arch: str, tag: str) -> Source:
    if arch not in open_clip.list_models():
        raise UserError(
            f"clip/{arch}@{tag}: open_clip has no architecture {arch!r} (open_clip.list_models() "
            "lists them), e.g. clip/ViT-B-32@laion2b_s34b_b79k"
        )
    if not open_clip.get_pretrained_cfg(arch, tag):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        hint = f"one of {_few(tags)}" if tags else "none exists for it"
        raise UserError(f"clip/{arch}@{tag}: {arch} has no pretrained tag {tag!r}: {hint}")
    return Source("tag", arch, tag.lower().replace("-", "_"))


def _folder_source(name: str, path: Path) -> Source:
    if not path.is_dir():
        raise UserError(
            f"clip/{name}: no folder {path}; a local model is a folder holding "
            "open_clip_config.json and weights (open_clip) or config.json (transformers)"
        )
    path = path.resolve()
    if (path / "open_clip_config.json").is_file():
        if not any(f for pattern in _WEIGHTS for f in path.glob(pattern)):
            raise UserError(
                f"clip/{name}: {path} holds open_clip_config.json but no weights "
                "(open_clip_model.safetensors or .bin/.pth): put them beside it"
            )
        return Source("open_clip_dir", str(path))
    if (path / "config.json").is_file():
        return Source("hf_dir", str(path))
    raise UserError(
        f"clip/{name}: {path} holds neither open_clip_config.json (open_clip) nor config.json "
        "(transformers CLIP/SigLIP)"
    )


def _few(items: Sequence[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


# --- loading -------------------------------------------------------------------------------


class _HFDualEncoder:
    """A transformers CLIP/SigLIP model behind open_clip's interface (`encode_image`,
    `encode_text`, `logit_scale`), so one code path and open_clip's zero-shot builder serve both."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        # SigLIP was trained on texts padded to the full length; CLIP pools at the end token.
        self.padding: bool | str = "max_length" if "siglip" in model.config.model_type else True

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale  # type: ignore[no-any-return]

    def tokenize(self, texts: list[str]) -> Any:
        return self.tokenizer(texts, padding=self.padding, truncation=True, return_tensors="pt")

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels), normalize)

    def encode_text(self, tokens: Any, normalize: bool = False) -> torch.Tensor:
        return _features(self.model.get_text_features(**tokens), normalize)


def _features(out: Any, normalize: bool) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is projected; 4.x a tensor.
    feats: torch.Tensor = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(feats, dim=-1) if normalize else feats


class _HFTransform:
    """An image processor as a PIL -> tensor transform (a class, so DataLoader workers can
    pickle it)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]  # type: ignore[no-any-return]


@dataclass
class _Loaded:
    """A model in memory, behind open_clip's interface."""

    model: Any
    tokenize: Callable[[list[str]], Any]
    transform: Callable[[Image.Image], torch.Tensor]


class Encoder:
    """A dual encoder: images to L2-normalised embeddings, labels to a zero-shot head.

    The weights are loaded on first use, so a run whose image embeddings are all cached (a probe
    trained again, a probe's rerun) never loads them."""

    def __init__(self, source: Source, device: torch.device, offline: bool) -> None:
        self.source = source
        self.device = device
        self.offline = offline
        self.spec = f"clip/{source.name}"
        self._loaded: _Loaded | None = None
        if offline and source.kind in ("tag", "open_clip_hub", "hf_hub"):
            _require_cached(self.spec, *_hub_files(source))  # one line, before any work
        identity = _identity(source)
        if identity is None or (source.kind in ("open_clip_hub", "hf_hub") and not offline):
            # Online, a hub repo's revision is the one the load resolves (it may be newer than
            # the cached one); offline, it is the cached one.
            self._load()
            identity = _identity(source) or f"{source.kind}:{source.ident}@unknown"
        self.identity = identity
        """Names the weights: hub name and revision, or a folder and its files' sizes and times."""
        precision = "fp32"
        if device.type == "cuda":
            precision = "amp-bf16" if torch.cuda.is_bf16_supported() else "amp-fp16"
        self.key = f"{identity}|{precision}"
        """Names the embeddings: the weights and the precision they ran at."""

    def _load(self) -> _Loaded:
        if self._loaded is None:
            if self.source.kind in ("hf_hub", "hf_dir"):
                self._loaded = _load_transformers(self.source, self.device, self.offline)
            else:
                self._loaded = _load_open_clip(self.source, self.device, self.offline)
        return self._loaded

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The model's own preprocessing, PIL image -> tensor."""
        return self._load().transform

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """L2-normalised float32 embeddings of a batch of preprocessed images."""
        model = self._load().model
        with torch.inference_mode(), common.autocast(self.device):
            out = model.encode_image(pixels.to(self.device), normalize=True)
        return out.float().cpu().numpy()  # type: ignore[no-any-return]

    def zero_shot_head(self, labels: Sequence[str], templates: Sequence[str]) -> Head:
        """One text embedding per label (the mean over the templates, renormalised) and the
        model's logit scale. SigLIP's logit bias is left out: it shifts every label alike, so the
        softmax over labels does not change."""
        from open_clip.zero_shot_classifier import build_zero_shot_classifier

        loaded = self._load()
        with torch.inference_mode(), common.autocast(self.device):
            weights = build_zero_shot_classifier(
                loaded.model, loaded.tokenize, list(labels), list(templates), device=self.device
            )
            scale = float(loaded.model.logit_scale.exp())
        weight = np.ascontiguousarray(weights.float().cpu().numpy().T)
        return Head(weight=weight, bias=np.zeros(len(labels), np.float32), scale=scale)

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        if self.source.kind in ("hf_hub", "hf_dir"):
            return common.versions(transformers=version("transformers"))
        return common.versions(open_clip=version("open_clip_torch"))

    def close(self) -> None:
        self._loaded = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def load_encoder(source: Source, device: torch.device, offline: bool) -> Encoder:
    """The model's encoder (`offline`: local files and the hub's cache only); its weights load
    when an image or a label first needs them."""
    return Encoder(source, device, offline)


def _identity(source: Source) -> str | None:
    """What names the weights, known without loading them (None: a hub model not cached yet)."""
    if source.kind == "tag":
        return f"open_clip:{source.name}"
    if source.kind in ("open_clip_dir", "hf_dir"):
        library = "open_clip" if source.kind == "open_clip_dir" else "transformers"
        return f"{library}:{source.ident}#{_folder_fingerprint(Path(source.ident))}"
    library = "open_clip" if source.kind == "open_clip_hub" else "transformers"
    filename = "open_clip_config.json" if source.kind == "open_clip_hub" else "config.json"
    revision = _hub_revision(source.ident, filename)
    return None if revision is None else f"{library}:{source.name}@{revision}"


def _hub_files(source: Source) -> tuple[str, list[str], str]:
    """A hub model's repo, the files any one of which shows it is cached, and how to fetch it."""
    if source.kind == "tag":
        import open_clip

        repo, files = _tag_files(open_clip.get_pretrained_cfg(source.ident, source.tag))
        return repo, files, f"hf download {repo} {files[0]}"
    filename = "open_clip_config.json" if source.kind == "open_clip_hub" else "config.json"
    return source.ident, [filename], f"hf download {source.ident}"


def _load_open_clip(source: Source, device: torch.device, offline: bool) -> _Loaded:
    import open_clip

    spec, pretrained, fetch = f"clip/{source.name}", None, ""
    if source.kind == "tag":
        name, pretrained = source.ident, source.tag
        fetch = _hub_files(source)[2]
    elif source.kind == "open_clip_hub":
        name, fetch = source.name, _hub_files(source)[2]
    else:
        name = f"local-dir:{source.ident}"
    try:
        with common.hub_offline(offline):
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device
            )
            tokenizer = open_clip.get_tokenizer(name)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise common.load_error(spec, e, offline, fetch) from e
    return _Loaded(model.eval(), tokenizer, preprocess)


def _load_transformers(source: Source, device: torch.device, offline: bool) -> _Loaded:
    from huggingface_hub.errors import EntryNotFoundError

    spec = f"clip/{source.name}"
    try:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
    except ImportError:
        raise UserError(
            f"{spec} is a transformers model: install the 'local' extra, "
            "pip install 'vlm-classify[local]'"
        ) from None
    fetch = _hub_files(source)[2] if source.kind == "hf_hub" else ""
    also = (
        f" (an open_clip hub model is written clip/hf-hub:{source.ident}, a local folder "
        f"clip/./{source.ident})"
        if fetch
        else ""
    )
    errors = (OSError, ValueError, RuntimeError, KeyError, EntryNotFoundError)
    with common.hub_offline(offline):
        try:
            model = AutoModel.from_pretrained(source.ident, local_files_only=offline)
        except errors as e:
            raise common.load_error(spec, e, offline, fetch, also) from e
        if not all(hasattr(model, a) for a in ("get_image_features", "get_text_features")):
            raise UserError(
                f"{spec} is a {model.config.model_type!r} model, not a CLIP-style dual encoder "
                "(CLIP, SigLIP...) with image and text embeddings"
            )
        try:
            processor = AutoImageProcessor.from_pretrained(source.ident, local_files_only=offline)
            tokenizer = AutoTokenizer.from_pretrained(source.ident, local_files_only=offline)
        except errors as e:
            raise common.load_error(spec, e, offline, fetch, also) from e
    dual = _HFDualEncoder(model.to(device).eval(), tokenizer)
    return _Loaded(dual, dual.tokenize, _HFTransform(processor))


def _tag_files(cfg: dict[str, Any]) -> tuple[str, list[str]]:
    """The hub repo of an open_clip pretrained tag and the weight files open_clip would read:
    the safetensors twin it prefers, then the file the tag names (open_clip's own rules)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = str(cfg.get("hf_hub", ""))
    if not hub:  # a URL download (none in open_clip 3.x): open_clip keeps it in ~/.cache/clip
        return str(cfg.get("url", "")), [os.path.basename(str(cfg.get("url", "")))]
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def _require_cached(spec: str, repo: str, files: Sequence[str], fetch: str) -> None:
    """Offline: stop before loading when none of `files` is in the local cache."""
    if "://" in repo:
        cached = Path("~/.cache/clip").expanduser().joinpath(files[0]).is_file()
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    if not cached:
        raise UserError(
            f"{spec} is not in the local Hugging Face cache and --offline (or HF_HUB_OFFLINE=1) "
            f"allows local files only: fetch it once with `{fetch}` or run without --offline"
        )


def _hub_revision(repo: str, filename: str) -> str | None:
    """The commit of the cached snapshot (so the cache key changes when the repo does)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, filename)
    if isinstance(path, str):
        parts = Path(path).parts
        if "snapshots" in parts[:-1]:
            return parts[parts.index("snapshots") + 1]
    return None


def _folder_fingerprint(path: Path) -> str:
    """The names, sizes and modification times of a model folder's files: cheap, and it changes
    whenever the weights do (copying the folder elsewhere changes it too)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# --- classifying ---------------------------------------------------------------------------


class ClipBackend:
    """A batch of images -> one pass of the image encoder for those not cached -> one matrix
    product against the head -> a distribution over the labels per image."""

    def __init__(self, name: str, embedder: Embedder, labels: Sequence[str], head: Head) -> None:
        self.name = name
        self.embedder = embedder
        self.encoder = embedder.encoder
        self.device = str(self.encoder.device)
        self.labels = list(labels)
        self.head = head

    def classify_batch(self, items: Sequence[ManifestRow]) -> list[Prediction]:
        probs = self.head.probs(self.embedder.embed(items))
        return [prediction_from_scores(self.labels, p.tolist()) for p in probs]

    def speed(self) -> tuple[int, float] | None:
        """(images, seconds) of image-encoder work: what an image costs, cached or not (the head
        is one small product)."""
        return self.embedder.speed()

    def gpu_peak_mb(self) -> float | None:
        return common.gpu_peak_mb(self.encoder.device)

    def versions(self) -> dict[str, str]:
        return self.encoder.versions()

    def close(self) -> None:
        self.encoder.close()


def make_backend(
    ref: ModelRef, labels: list[str], prepared_dir: Path, settings: LocalSettings
) -> ClipBackend:
    """Zero-shot over the prompt templates, or (`clip/arm:NAME`) a trained linear probe."""
    device = common.resolve_device(settings.device)
    offline = common.offline(settings.offline)
    source = parse_name(ref.name)
    if source.kind == "arm":
        model_dir = resolve_arm_model(ref.name, prepared_dir)
        assert model_dir is not None  # an arm: name always resolves or raises
        meta, head = load_probe(model_dir, labels, str(ref))
        encoder = load_encoder(
            parse_name(meta["base_model"].removeprefix("clip/")), device, offline
        )
        if encoder.identity != meta.get("encoder"):
            log.warning(
                "%s: the base model's files changed since the probe was trained (%s, now %s)",
                ref,
                meta.get("encoder"),
                encoder.identity,
            )
    else:
        encoder = load_encoder(source, device, offline)
        head = encoder.zero_shot_head(labels, load_templates(settings.templates))
    embedder = Embedder(encoder, prepared_dir, settings.batch_size, settings.workers)
    return ClipBackend(str(ref), embedder, labels, head)


# --- linear probe --------------------------------------------------------------------------


def make_trainer(
    ref: ModelRef, labels: list[str], prepared_dir: Path, options: TrainOptions
) -> ProbeTrainer:
    """A linear probe on `ref`'s image embeddings (`finetune --model clip/...`)."""
    if options.epochs is not None or options.lr is not None:
        raise UserError(
            "--epochs and --lr do not apply to clip/ models: the linear probe chooses its "
            "regularisation on val over a fixed grid; drop them"
        )
    source = parse_name(ref.name)
    if source.kind == "arm":
        raise UserError(
            f"{ref}: a probe trains on a base model's embeddings, not on another probe: "
            "pass that arm's base model"
        )
    settings = options.local
    encoder = load_encoder(
        source, common.resolve_device(settings.device), common.offline(settings.offline)
    )
    batch_size = options.batch_size or settings.batch_size
    embedder = Embedder(encoder, prepared_dir, batch_size, settings.workers)
    return ProbeTrainer(embedder, labels, base_model=f"clip/{source.name}")


__all__ = [
    "ClipBackend",
    "Encoder",
    "Source",
    "load_encoder",
    "make_backend",
    "make_trainer",
    "parse_name",
]
