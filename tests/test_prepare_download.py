"""Stanford Dogs download: resume, verification and safe extraction, against a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dataset_fixtures import rgb_image
from vlm_classify.dataset.download import download_stanford_dogs, safe_extract
from vlm_classify.errors import DataError


class _Server(ThreadingHTTPServer):
    payload: bytes = b""
    ranges: list[str | None]
    drop_first: bool = False


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.payload` with Range support; can drop the first response half way."""

    server: _Server

    def do_GET(self) -> None:
        body, rng = self.server.payload, self.headers.get("Range")
        self.server.ranges.append(rng)
        start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng else 0  # type: ignore[union-attr]
        if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.server.drop_first:
            self.server.drop_first = False
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.ranges = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/images.tar"


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _dogs_tar() -> bytes:
    members = []
    for i in range(3):
        img = io.BytesIO()
        rgb_image(seed=i).save(img, "JPEG")
        members.append(
            (tarfile.TarInfo(f"Images/n02085620-Chihuahua/n02085620_{i}.jpg"), img.getvalue())
        )
    return _tar(members)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_download_resumes_a_part_file_and_extracts(tmp_path: Path, server: _Server) -> None:
    server.payload = payload = _dogs_tar()
    cache = tmp_path / "cache"
    part = cache / "stanford-dogs" / "images.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:1000])
    seen: list[tuple[int, int | None]] = []
    root = download_stanford_dogs(
        cache,
        url=_url(server),
        size=len(payload),
        checksum=_sha(payload),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert server.ranges == ["bytes=1000-"]
    assert seen[-1] == (len(payload), len(payload))
    assert sorted(p.name for p in (root / "Images" / "n02085620-Chihuahua").iterdir()) == [
        f"n02085620_{i}.jpg" for i in range(3)
    ]
    assert not part.exists() and not (cache / "stanford-dogs" / "images.tar").exists()
    again = download_stanford_dogs(
        cache, url=_url(server), size=len(payload), checksum=_sha(payload)
    )
    assert again == root and len(server.ranges) == 1  # cached: no second request


def test_dropped_connection_is_resumed(tmp_path: Path, server: _Server) -> None:
    server.payload = payload = _dogs_tar()
    server.drop_first = True
    download_stanford_dogs(tmp_path, url=_url(server), size=len(payload), checksum=_sha(payload))
    assert server.ranges[0] is None and server.ranges[1] == f"bytes={len(payload) // 2}-"


def test_checksum_mismatch_is_a_clear_error_and_deletes_the_download(
    tmp_path: Path, server: _Server
) -> None:
    server.payload = _dogs_tar()
    with pytest.raises(DataError, match=r"failed its md5 check.*rerun") as e:
        download_stanford_dogs(tmp_path, url=_url(server), size=None, checksum="md5:" + "0" * 32)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "stanford-dogs").glob("images.tar*"))


def test_unexpected_size_is_refused(tmp_path: Path, server: _Server) -> None:
    server.payload = payload = _dogs_tar()
    with pytest.raises(DataError, match="were expected"):
        download_stanford_dogs(tmp_path, url=_url(server), size=len(payload) + 1, checksum=None)


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(
    "member",
    [
        (tarfile.TarInfo("Images/../../evil.txt"), b"x"),
        (tarfile.TarInfo("/tmp/vlm-classify-abs-evil.txt"), b"x"),
        (_symlink("Images/link", "../../outside"), None),
        (_symlink("Images/abs", "/etc/passwd"), None),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-abs"],
)
def test_path_escaping_members_are_refused(
    tmp_path: Path, server: _Server, member: tuple[tarfile.TarInfo, bytes | None]
) -> None:
    ok = (tarfile.TarInfo("Images/n02085620-Chihuahua/a.jpg"), b"fine")
    server.payload = payload = _tar([ok, member])
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(DataError, match="refused archive member"):
        download_stanford_dogs(cache, url=_url(server), size=len(payload), checksum=_sha(payload))
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/vlm-classify-abs-evil.txt").exists()
    assert not (cache / "stanford-dogs" / "extracted").exists()  # nothing half-extracted


def test_corrupt_archive_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(_dogs_tar()[:700])
    with pytest.raises(DataError, match="not a readable tar"):
        safe_extract(bad, tmp_path / "out")
