"""A real browser for the tests: Debian's headless chromium, driven over the Chrome DevTools protocol with the
`websockets` package (not our code). Under CI=true a missing chromium fails the test; elsewhere it skips with the
reason printed."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_or_skip() -> str:
    """The chromium binary; without one: a failure under CI=true (the browser tests must run there), else a skip."""
    if shutil.which(CHROMIUM):
        return CHROMIUM
    reason = f"{CHROMIUM} is not installed (apt-get install chromium; tests/run.sh does it as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the browser test cannot be skipped: {reason}")
    print(f"skipping the browser test: {reason}")
    pytest.skip(reason)


class Browser:
    """One headless chromium with one page open at `url`; js() runs an expression there and returns its value."""

    def __init__(self, profile: Path, url: str, width: int = 1100, height: int = 900) -> None:
        binary = chromium_or_skip()
        profile.mkdir(parents=True, exist_ok=True)
        command = [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
        command += [f"--window-size={width},{height}", url]
        self._log = profile / "chromium.log"  # a file, not a pipe: chromium's chatter never fills a buffer
        with self._log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        self._ids = 0
        try:
            port = self._devtools_port(profile)
            # entered as a context manager: the form every websockets version since 15 takes without a warning
            self.socket: ClientConnection = connect(self._page_socket(port), max_size=None, proxy=None).__enter__()
            # the viewport exactly width x height (a headless window's own chrome would take some of it)
            self.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, profile: Path, timeout: float = 30.0) -> int:
        """chromium writes the port it chose (port 0) into DevToolsActivePort in its profile."""
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (active.exists() and active.read_text().strip()):
            if self.process.poll() is not None:
                raise AssertionError(f"chromium exited: {self._log.read_text()[-2000:]}")
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.05)
        return int(active.read_text().split()[0])

    @staticmethod
    def _page_socket(port: int, timeout: float = 30.0) -> str:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as reply:
                pages = [t for t in json.loads(reply.read()) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            assert time.monotonic() < deadline, "chromium opened no page"
            time.sleep(0.05)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are skipped."""
        self._ids += 1
        self.socket.send(json.dumps({"id": self._ids, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv(timeout=60))
            if reply.get("id") == self._ids:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} raised in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60.0, what: str = "") -> Any:
        """Poll `expression` in the page until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"the page never showed {what or expression!r}"
            time.sleep(0.05)

    def type_text(self, text: str) -> None:
        self.call("Input.insertText", text=text)

    def press_enter(self) -> None:
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
        self.call("Input.dispatchKeyEvent", type="rawKeyDown", **key)
        self.call("Input.dispatchKeyEvent", type="char", text="\r", **key)
        self.call("Input.dispatchKeyEvent", type="keyUp", **key)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.__exit__(None, None, None)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
