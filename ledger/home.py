"""Where everything lives under CITYLEDGER_HOME, and how secrets are written.

One place names every file so that the CLI, ingest, broker and dashboard agree,
and so that a secret is never written with a permissive mode even for a moment.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

log = logging.getLogger("cityledger.home")

DISTRICT_FILE = "district"  # in a district's home: the district's name, and nothing else


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CITYLEDGER_{name}", default)


@dataclass(frozen=True)
class Home:
    """The files of one cityledger installation."""

    root: Path

    @classmethod
    def from_env(cls, override: str | os.PathLike[str] | None = None) -> Home:
        return cls(Path(override or _env("HOME", "./var")).resolve())

    @cached_property
    def district(self) -> str | None:
        """The district whose chain this home keeps, or None for a city home.

        A district's home lives at CITY/districts/NAME (made by `cityledger districts add`):
        a whole ledger of its own, sharing only the city's broker.
        """
        try:
            return (self.root / DISTRICT_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def city(self) -> Path:
        """The city home's root: this one, or the one a district's home sits in."""
        return self.root.parent.parent if self.district else self.root

    def district_home(self, district: str) -> Home:
        return Home(self.root / "districts" / district)

    def login(self, name: str) -> str:
        """The broker login of this home's service `name`: a district's are prefixed by the district,
        so that every district's ingest, acks publisher and workers have logins of their own."""
        return f"{self.district}.{name}" if self.district else name

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
        """The city's broker, which every district's home shares."""
        return self.city / "broker"

    @property
    def access_fragments(self) -> Path:
        """Each home's share of the broker's passwd and ACL (broker/access.py merges them)."""
        return self.broker / "access.d"

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
    def jobs(self) -> Path:
        """What each of the scheduler's jobs did last (ledger.jobs), for `status` and the dashboard."""
        return self.root / "jobs.json"

    @property
    def supervisor_state(self) -> Path:
        """What `cityledger up` knows of its parts (restarts, pids), for `cityledger status` (0600)."""
        return self.root / "supervisor.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tlog(self) -> Path:
        """The transparency log's public files (PROTOCOL.md section 7): `checkpoint` and `tile/...`,
        written by the ledger's writer and served read-only by `cityledger serve` or any web server."""
        return self.root / "tlog"

    @property
    def witness_policy(self) -> Path:
        """The witnesses whose cosignatures a checkpoint needs, in C2SP tlog-policy form."""
        return self.root / "witness-policy"

    def ensure(self) -> None:
        for d in (
            self.root,
            self.secrets,
            self.ledger_key.parent,
            self.broker,
            self.broker_data,
            self.logs,
            self.access_fragments,
        ):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.secrets, self.ledger_key.parent):
            d.chmod(0o700)
        self.close_to_others()

    def close_to_others(self) -> int:
        """Take every permission of group and others off the home and all in it; how many paths had any.

        The database, its WAL, the logs and the fleet's outboxes are written by libraries
        (DuckDB, SQLite, logging) with the process's umask, which `cityledger` sets to 077;
        a home made by an older version, or by hand, is closed here when a service starts,
        with a warning naming how much was open.
        """
        opened: list[tuple[Path, int]] = []
        for path in (self.root, *self.root.rglob("*")):
            try:
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
                    continue
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
            except FileNotFoundError:  # a file a running part removed meanwhile
                continue
            opened.append((path, stat.S_IMODE(st.st_mode)))
        if opened:
            first, was = opened[0]
            log.warning(
                "%d paths in %s were open to other users (e.g. %s, mode %o): now only the owner's",
                len(opened),
                self.root,
                first,
                was,
            )
        return len(opened)


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
