"""Image embeddings of manifest rows, cached on disk, and the softmax head that turns them into
class probabilities. Nothing here knows which model made them: any image encoder that says what
names its weights (`ImageEncoder.key`) can use the cache, so a rerun, other templates or a probe
cost no image-encoder pass.

The cache lives under the prepared folder, one folder per model and precision
(`DIR/cache/embeddings/KEY/`), keyed by image sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from scipy.special import softmax

from ...dataset.manifest import ManifestRow
from ...files import atomic_open, write_text_atomic
from . import common

log = logging.getLogger(__name__)

SPEED_JSON = "speed.json"
"""In a cache folder: images encoded and seconds taken, by device type."""
CACHE_DIR = Path("cache") / "embeddings"
"""Under the prepared dir: one folder of embedding chunks per model (and precision)."""


class ImageEncoder(Protocol):
    """What the cache, a backend and a probe need of an image encoder."""

    key: str
    """Names the embeddings: the weights and the precision they ran at (the cache's key)."""
    identity: str
    """Names the weights alone (recorded with a probe, to notice when they change)."""
    device: torch.device

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The model's own preprocessing, PIL image -> tensor."""
        ...

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """L2-normalised float32 embeddings of a batch of preprocessed images."""
        ...

    def versions(self) -> dict[str, str]: ...

    def close(self) -> None: ...


def cache_folder(prepared_dir: Path, key: str) -> Path:
    """`DIR/cache/embeddings/<readable part>-<hash of the key>`."""
    tail = key.split("|")[0].split("#")[0].rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^A-Za-z0-9._@-]+", "_", tail)[-48:].strip("._") or "model"
    return (
        Path(prepared_dir) / CACHE_DIR / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    )


class EmbeddingCache:
    """One model's L2-normalised image embeddings by image sha256: `.npz` chunks in one folder,
    each written to a temporary name and renamed, so an interrupted run loses at most the batch
    it was computing and the next run computes only what is missing."""

    MAX_CHUNKS = 64
    """More chunks than this are merged into one on load."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._rows: dict[str, np.ndarray] = {}
        chunks = sorted(folder.glob("*.npz")) if folder.is_dir() else []
        for chunk in chunks:
            self._read(chunk)
        if len(chunks) > self.MAX_CHUNKS and self._rows:
            merged = self._write(list(self._rows), np.stack(list(self._rows.values())))
            for chunk in chunks:
                if chunk != merged:
                    chunk.unlink(missing_ok=True)

    def __contains__(self, sha: str) -> bool:
        return sha in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, sha: str) -> np.ndarray:
        return self._rows[sha]

    def add(self, shas: Sequence[str], embeddings: np.ndarray) -> None:
        self._write(shas, embeddings)
        self._rows.update(zip(shas, embeddings, strict=True))

    def _read(self, chunk: Path) -> None:
        try:
            with np.load(chunk, allow_pickle=False) as z:
                shas, embeddings = z["sha256"], z["embedding"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("dropping unreadable embedding chunk %s (%s)", chunk, e)
            chunk.unlink(missing_ok=True)
            return
        self._rows.update(zip(shas.tolist(), embeddings, strict=True))

    def _write(self, shas: Sequence[str], embeddings: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(shas).encode()).hexdigest()[:24]
        final = self.folder / f"{name}.npz"
        with atomic_open(final, "wb") as f:
            np.savez(
                f,
                sha256=np.asarray(shas, dtype="U64"),
                embedding=np.asarray(embeddings, np.float32),
            )
        return final


class Embedder:
    """Embeddings of manifest rows through the cache: only images it lacks go through the image
    encoder, a batch at a time, each batch saved as soon as it is computed."""

    def __init__(
        self, encoder: ImageEncoder, prepared_dir: Path, batch_size: int, workers: int
    ) -> None:
        self.encoder = encoder
        self.root = Path(prepared_dir)
        self.batch_size = batch_size
        self.workers = workers
        self.cache = EmbeddingCache(cache_folder(self.root, encoder.key))
        self.computed = 0
        """Images this embedder sent through the image encoder."""
        self.reused = 0
        """Images it found in the cache."""
        self.encode_s = 0.0
        """Seconds spent decoding and encoding those images."""

    def embed(self, rows: Sequence[ManifestRow]) -> np.ndarray:
        todo = list({r.image_sha256: r for r in rows if r.image_sha256 not in self.cache}.values())
        self.reused += len(rows) - len(todo)
        if todo:
            t0 = time.perf_counter()
            data = common.ImageDataset(self.root, todo, self.encoder.transform)
            start = 0
            for pixels, _ in common.loader(
                data, self.batch_size, self.workers, self.encoder.device
            ):
                batch = todo[start : start + len(pixels)]
                start += len(batch)
                self.cache.add([r.image_sha256 for r in batch], self.encoder.encode_images(pixels))
                self.computed += len(batch)
            elapsed = time.perf_counter() - t0
            self.encode_s += elapsed
            self._record_speed(len(todo), elapsed)
        return np.stack([self.cache.get(r.image_sha256) for r in rows])

    def _record_speed(self, images: int, seconds: float) -> None:
        """Add to the cache's record of what encoding costs on this kind of device, so that a
        run whose embeddings were all cached can still be priced by what they took to make."""
        path = self.cache.folder / SPEED_JSON
        record = self._speeds()
        entry = record.setdefault(self.encoder.device.type, {"images": 0, "seconds": 0.0})
        entry["images"] += images
        entry["seconds"] += seconds
        self.cache.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(record))

    def _speeds(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads((self.cache.folder / SPEED_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def speed(self) -> tuple[int, float] | None:
        """(images, seconds) of real encoder work: this run's, else what the cache recorded on
        this kind of device (None when neither exists)."""
        if self.computed:
            return self.computed, self.encode_s
        entry = self._speeds().get(self.encoder.device.type)
        if not entry or not entry.get("images") or not entry.get("seconds"):
            return None
        return int(entry["images"]), float(entry["seconds"])


@dataclass(frozen=True)
class Head:
    """Class probabilities of L2-normalised embeddings: softmax(scale * x @ weight.T + bias).
    A zero-shot head (text embeddings and a logit scale) and a linear probe are both one."""

    weight: np.ndarray
    """K x D."""
    bias: np.ndarray
    """K."""
    scale: float = 1.0

    def probs(self, x: np.ndarray) -> np.ndarray:
        logits = self.scale * (x.astype(np.float64) @ self.weight.T.astype(np.float64))
        return softmax(logits + self.bias, axis=1)  # type: ignore[no-any-return]


__all__ = ["CACHE_DIR", "Embedder", "EmbeddingCache", "Head", "ImageEncoder", "cache_folder"]
