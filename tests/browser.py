"""Open a page in a real headless Chromium and report what a reader would see.

Speaks the Chrome DevTools Protocol over `--remote-debugging-pipe` (file descriptors 3 and 4,
NUL-separated JSON), so it needs no websocket client, no Python package and no network port.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    """`VLM_CLASSIFY_CHROMIUM`, else the first Chromium-like browser on PATH."""
    env = os.environ.get("VLM_CLASSIFY_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageReport:
    title: str
    images: list[dict[str, Any]]
    """Every <img>: its alt, whether it loaded (`complete` and `naturalWidth > 0`), its width."""
    console_errors: list[str]
    """console.error calls, uncaught exceptions and browser log entries at level error."""
    requests: list[str] = field(default_factory=list)
    """URLs the page fetched other than itself and data: URIs (a self-contained page has none)."""
    text: str = ""
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int, read_fd: int) -> None:
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            e = self._read_message(deadline)
            if e.get("method") == method:
                return e
            self.events.append(e)


_IMAGES_JS = """JSON.stringify([...document.images].map(i => ({
  alt: i.alt, loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth})))"""


def open_page(
    path: Path, browser: str, width: int = 1200, timeout: float = 45.0, full_page: bool = False
) -> PageReport:
    """Load `path` (a local file) in headless Chromium; collect images, errors and a screenshot."""
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="vlmc-chromium-") as profile:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()

        def child_fds() -> None:  # the protocol's fixed descriptors: 3 reads, 4 writes
            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        proc = subprocess.Popen(
            [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,
            pass_fds=(3, 4),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        pipe = _Pipe(proc, to_child_w, from_child_r)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            session = pipe.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_event("Page.loadEventFired", timeout=timeout)

            def evaluate(expression: str) -> Any:
                reply = pipe.send(
                    "Runtime.evaluate",
                    {"expression": expression, "returnByValue": True},
                    session=session,
                )
                return reply["result"]["value"]

            images = json.loads(evaluate(_IMAGES_JS))
            title = evaluate("document.title")
            text = evaluate("document.body.innerText")
            shot_params: dict[str, Any] = {"format": "png"}
            if full_page:
                size = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
                clip = {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                }
                shot_params |= {"captureBeyondViewport": True, "clip": clip}
            shot = pipe.send("Page.captureScreenshot", shot_params, session=session)["data"]
            errors, requests = [], []
            for e in pipe.events:
                method, params = e.get("method"), e.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in (
                    "error",
                    "assert",
                ):
                    errors.append(
                        " ".join(
                            str(a.get("value", a.get("description", "")))
                            for a in params.get("args", [])
                        )
                    )
                elif method == "Runtime.exceptionThrown":
                    errors.append(str(params.get("exceptionDetails", {}).get("text", "exception")))
                elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                    errors.append(str(params["entry"].get("text", "")))
                elif method == "Network.requestWillBeSent":
                    req = params.get("request", {}).get("url", "")
                    if req != url and not req.startswith("data:"):
                        requests.append(req)
            with contextlib.suppress(RuntimeError, TimeoutError):
                pipe.send("Browser.close", timeout=5)
            return PageReport(title, images, errors, requests, text, base64.b64decode(shot))
        finally:
            os.close(to_child_w)
            os.close(from_child_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
