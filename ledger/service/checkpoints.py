"""Publishing the log's checkpoints, cosigned by the witnesses the policy asks for (PROTOCOL.md section 7).

Why this order: a checkpoint is what a citizen's receipt and every monitor trust, so it is
published only once (1) the tiles it covers are on disk, where anyone can fetch the proofs,
and (2) enough independent witnesses have cosigned it (C2SP tlog-witness, tlog-policy): a
ledger that showed one history to some and another to others would need a quorum of
witnesses to cosign both, and each witness cosigns only what is consistent with what it
cosigned before.

Cadence: the newest checkpoint is offered to the witnesses at most every `interval_s`
(docs/scaling.md has the load this puts on them), except a checkpoint signed by two ledger
keys, the one of a key rotation, which is never skipped: a verifier that follows the keys
through checkpoints needs it. When the quorum cannot be met for `alarm_after_s`, the
checkpointer alarms (the log and `status`), and keeps trying.

Each witness is asked with a consistency proof from the size it last cosigned; a witness
that answers 409 names its size, and is asked once more with a proof from there.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ledger.chain.notes import (
    Checkpoint,
    Note,
    NoteError,
    Signature,
    b64,
    parse_checkpoint,
    parse_note,
    verify_cosignature,
)
from ledger.chain.policy import Policy, PolicyError, PolicyWitness, parse_policy
from ledger.chain.tlog import HashSource, consistency_proof_at
from ledger.home import write_private

log = logging.getLogger("cityledger.checkpoints")

CHECKPOINT_FILE = "checkpoint"
DEFAULT_INTERVAL_S = 5.0
DEFAULT_ALARM_AFTER_S = 300.0
WITNESS_TIMEOUT_S = 5.0


@dataclass
class CheckpointStatus:
    """What `status` shows of the log's publication."""

    published_size: int = 0
    published_at_ms: int | None = None
    cosigners: list[str] = field(default_factory=list)
    pending_size: int = 0
    failing_since_ms: int | None = None  # the quorum has not been met since
    alarm: str | None = None
    witnesses: dict[str, str] = field(default_factory=dict)  # name -> the last answer, in words


class Checkpointer:
    """Offers the newest checkpoint to the policy's witnesses, and publishes it once cosigned."""

    def __init__(
        self,
        directory: Path,
        policy_file: Path,
        source: HashSource,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        alarm_after_s: float = DEFAULT_ALARM_AFTER_S,
        timeout_s: float = WITNESS_TIMEOUT_S,
    ) -> None:
        self.directory, self.policy_file, self.source = directory, policy_file, source
        self.interval_s, self.alarm_after_s, self.timeout_s = interval_s, alarm_after_s, timeout_s
        self.on_published: list[Callable[[Note], None]] = []
        self.status = CheckpointStatus()
        self._sizes: dict[str, int] = {}  # witness name -> the size it holds for this log, as far as we know
        self._offered: Note | None = None
        self._must: list[Note] = []  # rotation checkpoints, published in order before anything newer
        self._cond = threading.Condition()
        self._policy_stamp: tuple[float, int] | None = None
        self._policy: Policy | None = None
        self._last_round = 0.0
        self._stop = False
        self._thread: threading.Thread | None = None
        self._load_published()

    # ------------------------------------------------------------ the writer's side

    def offer(self, note: Note) -> None:
        """The newest checkpoint whose tiles are on disk; one signed by two keys is never skipped."""
        with self._cond:
            if len(note.signatures) > 1:
                self._must.append(note)
            self._offered = note
            self.status.pending_size = parse_checkpoint(note.text).size
            self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop; first one last round for what was offered, so the published checkpoint covers the head."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._due():
                    self._cond.wait(self._wait_s())
                stopping = self._stop
                batch = self._must + ([self._offered] if self._offered else [])
                self._must, self._offered = [], None
            pending = _unique(batch)
            for i, note in enumerate(pending):
                if self._published_covers(note):
                    continue
                try:
                    published = self.round(note)
                except Exception:  # a bug here must not stop the log's publication for good
                    log.exception("a checkpoint round failed")
                    published = False
                if not published:  # again at the next round, with whatever came meanwhile
                    rest = pending[i:]
                    with self._cond:
                        self._must = [n for n in rest if len(n.signatures) > 1] + self._must
                        self._offered = self._offered or rest[-1]
                    break
            self._last_round = time.monotonic()
            if stopping:
                return

    def _due(self) -> bool:
        pending = bool(self._must) or self._offered is not None
        return pending and time.monotonic() - self._last_round >= self.interval_s

    def _wait_s(self) -> float | None:
        if not self._must and self._offered is None:
            return None
        return max(0.0, self.interval_s - (time.monotonic() - self._last_round))

    # ------------------------------------------------------------ one round

    def round(self, note: Note) -> bool:
        """Ask the witnesses to cosign `note`; publish it if the policy is met. True if published."""
        policy = self.policy()
        cosignatures: list[Signature] = []
        names: set[str] = set()
        if policy is not None and policy.requires_cosignatures():
            asked = [w for w in policy.witnesses if w.url]
            with ThreadPoolExecutor(max_workers=max(1, len(asked))) as pool:
                for witness, signature in zip(asked, pool.map(lambda w: self._ask(w, note), asked)):
                    if signature is not None:
                        cosignatures.append(signature)
                        names.add(witness.name)
            if not policy.satisfied(names):
                self._failing(note, names, policy)
                return False
        self._publish(note.with_signatures(*cosignatures), sorted(names))
        return True

    def _ask(self, witness: PolicyWitness, note: Note) -> Signature | None:
        """The witness's cosignature of `note`, or None (and why, in `status.witnesses`)."""
        size = parse_checkpoint(note.text).size
        for _ in range(2):
            old = self._sizes.get(witness.name, 0)
            if old > size:
                self.status.witnesses[witness.name] = f"holds size {old}, past this checkpoint's {size}"
                return None
            try:
                proof = consistency_proof_at(self.source, old, size) if 0 < old < size else []
            except ValueError as exc:
                self.status.witnesses[witness.name] = f"no consistency proof from size {old}: {exc}"
                return None
            body = f"old {old}\n".encode() + b"".join(b64(h).encode() + b"\n" for h in proof) + b"\n" + note.encode()
            status, answer = _post(f"{str(witness.url).rstrip('/')}/add-checkpoint", body, self.timeout_s)
            if status == 409:
                try:
                    self._sizes[witness.name] = int(answer.decode().strip())
                except ValueError:
                    self.status.witnesses[witness.name] = "409 without a size"
                    return None
                continue
            if status != 200:
                self.status.witnesses[witness.name] = f"HTTP {status}: {answer[:200].decode(errors='replace').strip()}"
                return None
            signature = _cosignature(note, answer, witness)
            if signature is None:
                self.status.witnesses[witness.name] = "answered without a valid cosignature"
                return None
            self._sizes[witness.name] = size
            self.status.witnesses[witness.name] = f"cosigned size {size}"
            return signature
        self.status.witnesses[witness.name] = "kept answering 409"
        return None

    def _failing(self, note: Note, names: set[str], policy: Policy) -> None:
        now = int(time.time() * 1000)
        if self.status.failing_since_ms is None:
            self.status.failing_since_ms = now
        waited = (now - self.status.failing_since_ms) / 1000
        log.warning("checkpoint not published: cosigned by %s only", ", ".join(sorted(names)) or "no witness")
        if waited >= self.alarm_after_s:
            self.status.alarm = (
                f"no checkpoint has met the witness policy for {waited:.0f} s "
                f"(cosigned by {', '.join(sorted(names)) or 'none'}; {self.status.witnesses})"
            )
            log.error("ALARM: %s", self.status.alarm)

    def _publish(self, note: Note, names: list[str]) -> None:
        write_private(self.directory / CHECKPOINT_FILE, note.encode())
        checkpoint = parse_checkpoint(note.text)
        self.status.published_size = checkpoint.size
        self.status.published_at_ms = int(time.time() * 1000)
        self.status.cosigners = names
        self.status.failing_since_ms, self.status.alarm = None, None
        for callback in self.on_published:
            try:
                callback(note)
            except Exception:  # the broker being away must not stop publication over HTTP
                log.exception("a checkpoint subscriber failed")

    # ------------------------------------------------------------ the policy and what is published

    def policy(self) -> Policy | None:
        """The witness policy in force, read again whenever its file changes; None without one.
        A file that does not parse leaves the previous policy in force (and is logged)."""
        try:
            st = self.policy_file.stat()
        except FileNotFoundError:
            self._policy_stamp, self._policy = None, None
            return None
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._policy_stamp:
            self._policy = load_policy(self.policy_file) or self._policy
            self._policy_stamp = stamp
        return self._policy

    def _load_published(self) -> None:
        published = published_checkpoint(self.directory)
        if published is not None:
            self.status.published_size, self.status.cosigners = published.size, published.cosigners

    def _published_covers(self, note: Note) -> bool:
        """A checkpoint no newer than the one published (a rotation's, signed twice, always goes out)."""
        size = parse_checkpoint(note.text).size
        return size < self.status.published_size or (size == self.status.published_size and len(note.signatures) == 1)


@dataclass(frozen=True)
class Published:
    """The checkpoint in a tile directory: what `status` shows and receipts of version 2 rest on."""

    note: Note
    checkpoint: Checkpoint

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def cosigners(self) -> list[str]:
        """The names on its signature lines other than the log's own."""
        return [s.name for s in self.note.signatures if s.name != self.checkpoint.origin]


def published_checkpoint(directory: Path) -> Published | None:
    try:
        note = parse_note((directory / CHECKPOINT_FILE).read_bytes())
        return Published(note, parse_checkpoint(note.text))
    except (FileNotFoundError, NoteError):
        return None


def load_policy(path: Path) -> Policy | None:
    """The witness policy in `path`, or None when there is none or it does not parse (logged)."""
    try:
        return parse_policy(path.read_text())
    except FileNotFoundError:
        return None
    except (PolicyError, OSError, UnicodeDecodeError) as exc:
        log.error("the witness policy %s does not parse: %s", path, exc)
        return None


def _unique(notes: list[Note]) -> list[Note]:
    seen: set[str] = set()
    out = []
    for note in notes:
        if note.text not in seen:
            seen.add(note.text)
            out.append(note)
    return out


def _post(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read(65536)
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(65536)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 0, str(exc).encode()


def _cosignature(note: Note, answer: bytes, witness: PolicyWitness) -> Signature | None:
    """The witness's cosignature line from its answer, if it verifies for this note."""
    for line in answer.decode("utf-8", errors="replace").splitlines(keepends=True):
        try:
            candidate = parse_note(note.text + "\n" + line).signatures[0]
            if verify_cosignature(note.with_signatures(candidate), witness.verifier) is not None:
                return candidate
        except (NoteError, IndexError):
            continue
    return None
