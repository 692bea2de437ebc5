"""The one way cityledger starts, stops and waits on a child process.

`cityledger up` runs each part as a child; the broker module starts Mosquitto; the
benchmarks and the tests start brokers, ingests, fleets and witnesses. Each used to
carry its own Popen, terminate, wait, kill loop, and they differed where it matters:
whether the child leads its own process group (so that a stop reaches what it
started), whether a SIGKILL follows an ignored SIGTERM, whether the child is reaped
(or stays a zombie that `kill -0` calls alive), whether a full pipe can stall the
wait. Here it is decided once:

- `start` puts the child in its own session, so Ctrl-C in a terminal reaches only
  the program that started it (which then stops its children in order), and so the
  child's process group is exactly the child and what it starts. Output goes where
  the caller says: a log file (appended; the parent keeps no descriptor), a pipe,
  /dev/null, or ours.
- `Child.stop` asks politely (SIGTERM, or SIGINT for a program that treats Ctrl-C
  as "stop"), waits up to a timeout, then SIGKILLs; afterwards it kills whatever is
  left in the child's group, so nothing the child started outlives the stop. It is
  idempotent and returns the exit code.
- `wait_until` polls a condition with a deadline and, on timeout, raises a
  `WaitTimeout` that names what it waited for: no sleep-and-hope anywhere.

This module sits in the ledger's bottom layer: it imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

T = TypeVar("T")

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT  # as `stderr`: into the same place as stdout

STOP_TIMEOUT_S = 15.0

# Where a child's stdout or stderr goes: a file to append to (a Path), PIPE, DEVNULL,
# STDOUT (stderr only), an open file, or None to share ours.
Sink = Path | int | IO[Any] | None


# ---------------------------------------------------------------- waiting


class WaitTimeout(TimeoutError):
    """`wait_until` gave up: the condition named `what` did not hold within `timeout` seconds.

    Its own class so that a caller catches this timeout and not a socket's
    TimeoutError raised from inside the condition.
    """

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:g} s waiting for {what}")
        self.what, self.timeout = what, timeout


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    *,
    what: str,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that.

    The predicate is called at least once, and once more at the deadline, so a
    condition that holds by then is never reported as timed out. An exception from
    the predicate ends the wait (a child that died should fail the wait at once, not
    after the timeout); a predicate that should treat one as "not yet" catches it.
    `sleep` is how to pass the time between calls: `threading.Event.wait` makes the
    wait end early on a stop request (the predicate then sees the event set).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(what, timeout)
        sleep(min(interval, left))


# ---------------------------------------------------------------- exits


def describe_exit(returncode: int) -> str:
    """An exit code in words: 'exit code 1', or 'killed by SIGKILL' for a negative one (a signal)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


# ---------------------------------------------------------------- children


class Child:
    """A process started by `start`, and the one way to signal, wait for and stop it.

    Reads like the `subprocess.Popen` it wraps (`pid`, `poll()`, `returncode`,
    `wait()`, `send_signal()`, `stdout`) so that code written against Popen keeps
    working; `popen` is there for anything else. A `with` block stops it on exit.

    A child that leads its own group (`own_group`, the default of `start`) takes its
    group with it: the moment its exit is noticed (poll, wait, stop), whatever is
    left in the group is SIGKILLed, so nothing it started outlives it. That happens
    once, right then, because the group's id is the child's pid, which the system
    hands out again once the child is reaped and its group empty (pid_max may be
    only 32768): a group signal sent later could hit a stranger.
    """

    def __init__(self, popen: subprocess.Popen[Any], *, own_group: bool) -> None:
        self.popen = popen
        self.own_group = own_group  # it leads its own process group, whose id is its pid
        self.forced = False  # the last stop had to SIGKILL it: it ignored its stop signal (or sig=None: ran on)
        self.out: Any = None  # what wait/stop read from a stdout pipe (None: not a pipe)
        self.err: Any = None  # likewise for stderr
        self._swept = False

    def __repr__(self) -> str:
        code = self.popen.returncode  # not poll(): looking at it must not reap it
        return f"<Child pid {self.pid} {'running' if code is None else describe_exit(code)}: {self.args!r}>"

    # ------------------------------------------------------------ looking

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def args(self) -> Any:
        return self.popen.args

    @property
    def returncode(self) -> int | None:
        """The exit code once it exited and was reaped (negative: killed by that signal), else None."""
        return self.popen.returncode

    @property
    def stdin(self) -> IO[Any] | None:
        return self.popen.stdin

    @property
    def stdout(self) -> IO[Any] | None:
        return self.popen.stdout

    @property
    def stderr(self) -> IO[Any] | None:
        return self.popen.stderr

    def poll(self) -> int | None:
        """The exit code if it has exited (reaping it, and sweeping its group), else None."""
        if self.popen.returncode is None and self._exited():
            self._sweep()  # before the reap, while its pid still names its group
        code = self.popen.poll()
        if code is not None:
            self._sweep()
        return code

    @property
    def alive(self) -> bool:
        return self.poll() is None

    def state(self) -> str:
        """'running', or its exit in words ('exit code 0', 'killed by SIGTERM')."""
        code = self.poll()
        return "running" if code is None else describe_exit(code)

    # ------------------------------------------------------------ signalling

    def send_signal(self, sig: int, *, group: bool = False) -> bool:
        """Send `sig` to the child, or with `group` to its whole process group; False if it has exited.

        Only a child that leads its own group has a group of its own to signal;
        for one started with `new_session=False`, `group` is ignored (its group is ours).
        """
        if self.popen.returncode is not None:
            return False  # reaped (and its group swept): its pid may be another process's by now
        try:
            if group and self.own_group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the child and everything in its group, now, without waiting (see `stop` for that)."""
        self.send_signal(signal.SIGKILL, group=True)

    # ------------------------------------------------------------ waiting and stopping

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to exit and return its exit code; subprocess.TimeoutExpired after `timeout` s.

        A child writing into a pipe of ours is read meanwhile (into `out`/`err`), so
        a full pipe cannot keep it from exiting; as with Popen.communicate, the wait
        also lasts until the pipes close. Output a caller read itself is not in `out`/`err`.
        """
        if self._has_pipes():
            self.out, self.err = self.popen.communicate(timeout=timeout)
        else:
            self.popen.wait(timeout)
        self._sweep()
        code = self.popen.returncode
        assert code is not None
        return code

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """`wait`, then (out, err), as Popen.communicate returns them (input goes through `start`)."""
        self.wait(timeout)
        return self.out, self.err

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S, *, group: bool = False) -> int:
        """Stop the child: `sig`, up to `timeout` s for it to exit, then SIGKILL. Returns the exit code.

        `sig` goes to the child alone, which then stops its own children in its own
        order (ingest joins its workers); with `group` it goes to the whole group,
        as Ctrl-C in a terminal would. `sig=None` sends nothing: it gives the child
        `timeout` s to finish on its own. `forced` tells afterwards whether the
        SIGKILL was needed. Whatever is left in its group then goes too (see the
        class docstring). Stopping a child that already exited returns its code again.
        """
        self.forced = False
        if sig is not None:
            self.send_signal(sig, group=group)
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.forced = not self._exited()  # else it exited, and something it started holds our pipe
            self.kill()
            try:
                self.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # a process outside its group holds our pipe: let go of it
                for stream in (self.popen.stdout, self.popen.stderr):
                    if stream is not None:
                        stream.close()
                self.wait()
        code = self.popen.returncode
        assert code is not None
        return code

    def _exited(self) -> bool:
        """Whether it has exited, without reaping it (a zombie keeps its pid, and so its group id, reserved)."""
        if self.popen.returncode is not None:
            return True
        if not hasattr(os, "waitid"):  # macOS before Python 3.13: look by reaping; the sweep follows at once
            return self.popen.poll() is not None
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped behind our back (popen.poll() from outside)
            return True

    def _sweep(self) -> None:
        """SIGKILL what is left of its group, once (see the class docstring)."""
        if self.own_group and not self._swept:
            self._swept = True
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # nothing left (or, reaped long ago, not ours)

    def _has_pipes(self) -> bool:
        return any(stream is not None and not stream.closed for stream in (self.popen.stdout, self.popen.stderr))

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout: Sink = None,
    stderr: Sink = None,
    stdin: int | IO[Any] | None = DEVNULL,
    input: str | bytes | None = None,
    text: bool = False,
    new_session: bool = True,
) -> Child:
    """Start `argv` as a child and return it; it runs until stopped (or `with start(...) as child:`).

    `stdout` and `stderr` take a Path to append to (its directory is made; the
    child keeps the only descriptor, so nothing of ours stays open), PIPE, DEVNULL,
    STDOUT (stderr only), an open file, or None to share ours. The child reads
    nothing from our stdin unless given `stdin`, or `input`, which is written to its
    stdin and closed (a secret handed over this way stays out of argv and `ps`).
    `text` makes pipes str instead of bytes. With `new_session` (the default) the
    child leads its own session and process group (see the module docstring).
    """
    if input is not None:
        stdin = PIPE
    opened: list[IO[bytes]] = []

    def sink(where: Sink) -> int | IO[Any] | None:
        if isinstance(where, Path):
            where.parent.mkdir(parents=True, exist_ok=True)
            handle = where.open("ab")
            opened.append(handle)
            return handle
        return where

    try:
        popen: subprocess.Popen[Any] = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=stdin,
            stdout=sink(stdout),
            stderr=sink(stderr),
            text=text,
            start_new_session=new_session,
        )
    finally:
        for handle in opened:
            handle.close()
    child = Child(popen, own_group=new_session)
    if input is not None:
        assert popen.stdin is not None
        try:
            popen.stdin.write(input)
        except BrokenPipeError:
            pass  # it exited without reading; its exit code will say why
        finally:
            with contextlib.suppress(BrokenPipeError):
                popen.stdin.close()
        popen.stdin = None  # so that a later communicate() leaves it alone
    return child
