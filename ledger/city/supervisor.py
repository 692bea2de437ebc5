"""Keep the parts of a city running: restart the one that dies, with backoff, and say so.

`cityledger up` runs each part (broker, ingest, fleet, scheduler, dashboard) as
its own process. A part that exits while nobody asked it to is restarted, never
mourned: the others keep running, because every part already copes with a
neighbour that comes and goes (devices keep readings in their outbox until the
ledger's `ack`; ingest and the agents reconnect to a broker that returns; the
broker keeps ingest's session). What a restart costs is only time.

Three pieces, each kept small so it can be checked on its own:

- `Backoff` and `CrashLoop`: the pure policy (how long to wait before restart
  number n, when a part counts as crash-looping), unit-tested without processes.
- The state file, HOME/supervisor.json (`Home.supervisor_state`): per part its
  state, pid, restarts, the time of the last restart and the last exit. Written
  atomically by ledger/service/supervision.py, which `cityledger status` reads
  through `parts_status`, so an operator sees restarts from any shell.
- `Supervisor`: the processes. Everything happens in the thread that calls
  `tick()`, `wait()` and `stop_all()` (up's main thread), so a restart can never
  race with shutdown: once `stop_all` runs, no tick runs again.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ledger.clock import now_ms
from ledger.errors import LedgerError
from ledger.home import Home
from ledger.processes import STDOUT, Child, WaitTimeout, describe_exit, start, wait_until
from ledger.service.supervision import PartRecord, write_state

STOP_TIMEOUT_S = 15.0


# ---------------------------------------------------------------- the policy (pure)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between restarts of one part.

    Restart n of a run of quick failures waits first_s * factor**(n-1), at most
    max_s. A part that stayed up for stable_s before it died starts a new run:
    one crash a day is restarted at once, a crash loop is slowed down to one try
    every max_s, and never given up on (a broker missing for an hour is back
    within max_s of its return).
    """

    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before restarting after the `failures`-th quick failure in a row (>= 1)."""
        if failures < 1:
            raise ValueError("failures counts from 1")
        # Bounded exponent: a part failing for days must not overflow a float.
        return min(self.max_s, self.first_s * self.factor ** min(failures - 1, 64))

    def failures_after_exit(self, failures: int, uptime_s: float) -> int:
        """The run of quick failures after an exit that came `uptime_s` after the part started."""
        return 1 if uptime_s >= self.stable_s else failures + 1


@dataclass(frozen=True)
class CrashLoop:
    """A part that exited `exits` times within `window_s` is crash-looping: reported, still retried."""

    exits: int = 5
    window_s: float = 60.0

    def looping(self, exit_times: Iterable[float], now: float) -> bool:
        return sum(1 for t in exit_times if now - t <= self.window_s) >= self.exits


# ---------------------------------------------------------------- the processes


@dataclass(frozen=True)
class PartSpec:
    """A part: its name, its `cityledger` arguments, and how to tell it is ready to serve.

    `ready` (None: running is ready) is polled after every (re)start; a part not
    ready within `ready_timeout_s` is killed and restarted like one that died.
    """

    name: str
    args: tuple[str, ...]
    ready: Callable[[], bool] | None = None
    ready_timeout_s: float = 30.0
    what: str = ""  # what readiness means, for messages ("the broker on port 1883")


@dataclass
class Part:
    spec: PartSpec
    log: Path
    record: PartRecord = field(default_factory=PartRecord)
    proc: Child | None = None
    ready: bool = False
    started: float = 0.0  # monotonic
    due: float | None = None  # monotonic time of a scheduled restart
    failures: int = 0  # quick failures in a row (Backoff)
    exits: deque[float] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Stopped(LedgerError):
    """A wait ended because a stop was requested (Ctrl-C)."""


class Supervisor:
    """Start parts, restart them when they die, stop them all in reverse order.

    Not thread-safe by design: one thread calls everything (see the module docstring).
    """

    def __init__(
        self,
        home: Home,
        env: Mapping[str, str],
        *,
        backoff: Backoff = Backoff(),
        crash_loop: CrashLoop = CrashLoop(),
        say: Callable[[str], None] | None = None,
        tick_s: float = 0.1,
    ) -> None:
        self.home, self.env = home, dict(env)
        self.backoff, self.crash_loop = backoff, crash_loop
        self.parts: list[Part] = []
        self.stopping = False
        self.tick_s = tick_s
        self._say = say or (lambda line: print(line, flush=True))

    # ------------------------------------------------------------ starting

    def start(self, spec: PartSpec) -> Part:
        """Start a new part now (in the order of calls: stop_all stops in reverse)."""
        if self.stopping:
            raise Stopped(f"not starting {spec.name}: stopping")
        part = Part(spec, self.home.logs / f"{spec.name}.log")
        self.parts.append(part)
        self._spawn(part, restart=False)
        return part

    def _spawn(self, part: Part, *, restart: bool) -> None:
        self.home.logs.mkdir(parents=True, exist_ok=True)
        if restart:
            with open(part.log, "ab") as log:
                log.write(
                    f"--- cityledger up: restart {part.record.restarts + 1} of {part.name} after "
                    f"{part.record.last_exit}\n".encode()
                )
        # In its own session (start's default): Ctrl-C reaches `up` only, which stops each part.
        proc = start(
            [sys.executable, "-m", "ledger.cli", *part.spec.args], env=self.env, stdout=part.log, stderr=STDOUT
        )
        part.proc = proc
        part.started, part.ready, part.due = time.monotonic(), False, None
        rec = part.record
        rec.state, rec.pid, rec.started_at = "starting", proc.pid, now_ms()
        if restart:
            rec.restarts += 1
            rec.last_restart_at = rec.started_at
        self.save()
        verb = "restarted" if restart else "started"
        extra = f" (restart {rec.restarts})" if restart else ""
        self._say(f"  {verb} {part.name:<10} pid {proc.pid:<7} log {part.log}{extra}")

    # ------------------------------------------------------------ watching

    def tick(self) -> None:
        """Notice exits, start restarts that are due, check readiness. Call often (every 0.1-0.5 s)."""
        if self.stopping:
            return
        for part in self.parts:
            now = time.monotonic()
            if part.proc is not None and not part.proc.alive:
                self._exited(part, now)
            elif part.proc is None and part.due is not None and now >= part.due:
                self._spawn(part, restart=True)
            elif part.proc is not None and not part.ready:
                self._check_ready(part, now)
            elif part.ready and part.record.crash_looping and now - part.started >= self.backoff.stable_s:
                part.record.crash_looping = False
                self.save()
                self._say(
                    f"[{time.strftime('%H:%M:%S')}] {part.name} has stayed up for "
                    f"{self.backoff.stable_s:.0f} s: no longer crash-looping"
                )

    def _check_ready(self, part: Part, now: float) -> None:
        check = part.spec.ready
        try:
            ready = check is None or bool(check())
        except Exception:
            ready = False
        if ready:
            part.ready = True
            part.record.state = "running"
            self.save()
        elif now - part.started > part.spec.ready_timeout_s and part.proc is not None:
            self._say(
                f"[{time.strftime('%H:%M:%S')}] {part.name} (pid {part.proc.pid}) not ready after "
                f"{part.spec.ready_timeout_s:.0f} s ({part.spec.what or 'readiness'}): killing it"
            )
            part.proc.kill()  # its exit is noticed on the next tick, and restarted like any other

    def _exited(self, part: Part, now: float) -> None:
        assert part.proc is not None
        code = part.proc.returncode
        assert code is not None
        uptime = now - part.started
        part.proc, part.ready = None, False
        part.failures = self.backoff.failures_after_exit(part.failures, uptime)
        part.exits.append(now)
        delay = self.backoff.delay(part.failures)
        part.due = now + delay
        was_looping = part.record.crash_looping
        rec = part.record
        rec.state, rec.pid = "backoff", None
        rec.last_exit_code, rec.last_exit, rec.last_exit_at = code, describe_exit(code), now_ms()
        rec.crash_looping = self.crash_loop.looping(part.exits, now)
        self.save()
        self._say(
            f"[{time.strftime('%H:%M:%S')}] {part.name} {describe_exit(code)} after {uptime:.1f} s; "
            f"restarting it in {delay:.1f} s (restart {rec.restarts + 1}); see {part.log}"
        )
        if rec.crash_looping and not was_looping:
            self._say(
                f"[{time.strftime('%H:%M:%S')}] {part.name} is crash-looping ({self.crash_loop.exits} exits "
                f"within {self.crash_loop.window_s:.0f} s); still retrying, at most "
                f"{self.backoff.max_s:.0f} s apart; the other parts keep running"
            )

    def wait(
        self, condition: Callable[[], bool], timeout: float, what: str, stop: threading.Event, part: Part | None = None
    ) -> None:
        """Tick until `condition()` holds; raise RuntimeError after `timeout` s, Stopped on a stop request.

        Exceptions from `condition` count as "not yet" (a part it asks may be restarting).
        """

        def ticked() -> bool:
            if stop.is_set():
                raise Stopped(f"stopped while waiting for {what}")
            self.tick()
            try:
                return bool(condition())
            except Exception:
                return False

        try:
            wait_until(ticked, timeout, self.tick_s, what=what, sleep=stop.wait)  # a stop request ends the pause
        except WaitTimeout as exc:
            detail = ""
            if part is not None and part.record.restarts:
                detail = (
                    f" ({part.name} restarted {part.record.restarts} times, last after "
                    f"{part.record.last_exit}; see {part.log})"
                )
            elif part is not None:
                detail = f" (see {part.log})"
            raise RuntimeError(f"{exc}{detail}") from None

    def wait_ready(self, part: Part, stop: threading.Event, timeout: float | None = None) -> None:
        self.wait(
            lambda: part.ready,
            timeout if timeout is not None else part.spec.ready_timeout_s,
            part.spec.what or f"{part.name} to be ready",
            stop,
            part,
        )

    def get(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def restarts(self) -> dict[str, int]:
        return {p.name: p.record.restarts for p in self.parts if p.record.restarts}

    def crash_looping(self) -> list[str]:
        return [p.name for p in self.parts if p.record.crash_looping]

    # ------------------------------------------------------------ stopping

    def stop_all(self) -> None:
        """Stop every part, last started first; no restart happens from here on."""
        self.stopping = True
        for part in reversed(self.parts):
            part.due = None
            if part.proc is not None:
                part.proc.stop(signal.SIGTERM, STOP_TIMEOUT_S)
            part.proc, part.ready = None, False
            part.record.state, part.record.pid = "stopped", None
            self.save()
            self._say(f"  stopped {part.name}")

    def save(self) -> None:
        write_state(self.home.supervisor_state, {p.name: p.record for p in self.parts})
