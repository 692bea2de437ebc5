"""Where everything lives under CITYLEDGER_HOME, and how secrets are written.

One place names every file so that the CLI, ingest, broker and dashboard agree,
and so that a secret is never written with a permissive mode even for a moment.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CITYLEDGER_{name}", default)


@dataclass(frozen=True)
class Home:
    """The files of one cityledger installation."""

    root: Path

    @classmethod
    def from_env(cls, override: str | os.PathLike[str] | None = None) -> Home:
        return cls(Path(override or _env("HOME", "./var")).resolve())

    @property
    def database(self) -> Path:
        return self.root / "ledger.duckdb"

    @property
    def ledger_key(self) -> Path:
        return self.root / "keys" / "ledger.key"

    @property
    def ledger_next_key(self) -> Path:
        """A ledger key being rotated in; exists only during a rotation."""
        return self.root / "keys" / "ledger.next"

    @property
    def trusted_key(self) -> Path:
        """The first ledger public key: the default anchor `verify` trusts."""
        return self.root / "keys" / "first-ledger-key.pub"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    def service_secret(self, username: str) -> Path:
        return self.secrets / f"{username}.json"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def broker_config(self) -> Path:
        return self.broker / "mosquitto.conf"

    @property
    def passwd(self) -> Path:
        return self.broker / "passwd"

    @property
    def acl(self) -> Path:
        return self.broker / "acl"

    @property
    def broker_pid(self) -> Path:
        return self.broker / "mosquitto.pid"

    @property
    def broker_data(self) -> Path:
        return self.broker / "data"

    @property
    def rpc_socket(self) -> Path:
        """The ingest's local API; its presence means a writer owns the database."""
        return self.root / "ingest.sock"

    @property
    def fleet(self) -> Path:
        """The simulated devices' own storage (keys, credentials, outbox)."""
        return self.root / "fleet"

    @property
    def last_audit(self) -> Path:
        """The scheduler's latest audit result, for the dashboard."""
        return self.root / "audit.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def ensure(self) -> None:
        for d in (self.root, self.secrets, self.ledger_key.parent, self.broker, self.broker_data, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.secrets, self.ledger_key.parent):
            d.chmod(0o700)


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Atomically replace `path` with `data`, created with `mode` from the start.

    The temporary file is opened 0600 before any byte is written, then renamed,
    so a reader sees the old or the new content and never a readable secret.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
