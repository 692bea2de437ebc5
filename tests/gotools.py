"""The Go cross-checker ``tests/go/tlogcheck`` as a pytest fixture.

``tlogcheck`` checks cityledger's C2SP transparency-log artefacts with the Go team's own
golang.org/x/mod/sumdb/note and tlog (usage: run it without arguments, or read the top of
tests/go/tlogcheck/main.go). The session-scoped fixture ``tlogcheck`` builds it once, offline,
with Debian's golang-go and golang-golang-x-mod-dev, and returns a function that runs it::

    def test_receipt(tlogcheck: Tlogcheck, tmp_path: Path) -> None:
        result = tlogcheck("tlogproof", vkey, receipt_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[0] == "ok"

Exit status 0 means the check passed and stdout is one line starting with ``ok``; 1 means it
failed, with the reason on stderr; 2 is a usage error. A missing Go toolchain fails the test
rather than skipping it: an interop check that silently stops running is worse than none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Protocol

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "./tests/go/tlogcheck"
GOPATH = Path("/usr/share/gocode")
X_MOD_SUMDB = GOPATH / "src" / "golang.org" / "x" / "mod" / "sumdb"
SETUP_HINT = "run `bash .ci/setup --dev`, which installs Debian's golang-go and golang-golang-x-mod-dev"


class Tlogcheck(Protocol):
    """Runs the built ``tlogcheck`` with ``args``; ``input`` goes to its stdin (for ``-`` and ``@-``)."""

    def __call__(
        self, *args: str | os.PathLike[str], input: bytes | str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]: ...


def go_environment(cache: Path) -> dict[str, str]:
    """GOPATH mode against the OS packages: no module download, no proxy, no user go.env."""
    return {
        **os.environ,
        "GOPATH": str(GOPATH),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOENV": "off",
        "GOPROXY": "off",
        "GOCACHE": str(cache),
        # A static binary: needs no C compiler and behaves the same on every machine.
        "CGO_ENABLED": "0",
    }


def build_tlogcheck(out: Path) -> Path:
    """Builds tlogcheck into ``out``; fails the calling test with what to do if Go is missing."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(f"The Go toolchain (`go`) is not installed: {SETUP_HINT}.", pytrace=False)
    missing = [p for p in (X_MOD_SUMDB / "note", X_MOD_SUMDB / "tlog") if not p.is_dir()]
    if missing:
        pytest.fail(f"golang.org/x/mod is missing ({', '.join(map(str, missing))}): {SETUP_HINT}.", pytrace=False)
    exe = out / "tlogcheck"
    built = subprocess.run(
        [go, "build", "-o", str(exe), PACKAGE],
        cwd=REPO,
        env=go_environment(out / "gocache"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if built.returncode != 0:
        pytest.fail(f"`go build {PACKAGE}` failed:\n{built.stdout}{built.stderr}", pytrace=False)
    return exe


@pytest.fixture(scope="session")
def tlogcheck(tmp_path_factory: pytest.TempPathFactory) -> Tlogcheck:
    exe = build_tlogcheck(tmp_path_factory.mktemp("tlogcheck"))

    def run(
        *args: str | os.PathLike[str], input: bytes | str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        data = input.encode() if isinstance(input, str) else input
        done = subprocess.run(
            [str(exe), *map(os.fspath, args)],
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        )

    return run
