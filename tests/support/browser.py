"""Headless Debian Chromium driven by Playwright, plus a dashboard process to point it at.

Nothing here downloads a browser: Playwright is told to use /usr/bin/chromium,
with the flags this offline machine needs (no background networking).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from ledger.up import port_open
from tests.support.broker import free_port, wait_for
from tests.support.stack import Stack

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise AssertionError("Debian's chromium is not installed: run `bash .ci/setup --dev`")
    return path


@contextmanager
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def dashboard(stack: Stack) -> Iterator[str]:
    """`cityledger dashboard` on a free port of this stack; yields its URL."""
    port = free_port()
    log = stack.home.logs / "dashboard.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ledger.cli", "dashboard", "--port", str(port)],
                                env=stack.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, 60, "the dashboard's port")
        assert proc.poll() is None, f"dashboard exited:\n{log.read_text()}"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def save_screenshot(png: bytes, name: str, *, publish: bool = False) -> Path:
    """Keep a screenshot as a test artefact; `publish` also refreshes the README's copy."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(png)
    if publish:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / name).write_bytes(png)
    return path
