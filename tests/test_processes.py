"""ledger/processes.py against real child processes: start, stop, poll, wait.

Every child is `python -c ...`; a child tells the test it is ready (its signal
handlers installed, its grandchild started) by writing a file, and the test waits
for that file, never for a guessed number of seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledger.processes import DEVNULL, PIPE, STDOUT, Child, WaitTimeout, describe_exit, start, wait_until

PY = sys.executable

# Writes "ready" to argv[1] once SIGTERM is handled: the handler exits with code 3.
HANDLES_SIGTERM = """
import signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
Path(sys.argv[1]).write_text("ready")
while True:
    time.sleep(0.05)
"""

# Ignores SIGTERM, then says so.
IGNORES_SIGTERM = """
import signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)
Path(sys.argv[1]).write_text("ready")
while True:
    time.sleep(0.05)
"""

# Starts a grandchild that notes in argv[2] any SIGTERM or SIGINT it gets (and lives on), waits
# until it runs, writes the grandchild's pid to argv[1], then idles, or exits at once if argv[3] is "exit".
GRANDCHILD = """
import signal, sys, time
from pathlib import Path
def note(sig, frame):
    Path(sys.argv[2]).write_text(signal.Signals(sig).name)
signal.signal(signal.SIGTERM, note)
signal.signal(signal.SIGINT, note)
Path(sys.argv[1]).write_text("ready")
while True:
    time.sleep(0.05)
"""
GRANDPARENT = f"""
import subprocess, sys, time
from pathlib import Path
ready = Path(sys.argv[1] + ".grandchild")
grandchild = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}, str(ready), sys.argv[2]])
while not ready.exists():
    time.sleep(0.01)
Path(sys.argv[1]).write_text(str(grandchild.pid))
if sys.argv[3] == "exit":
    sys.exit(0)
while True:
    time.sleep(0.05)
"""


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait a moment for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_ready(tmp_path: Path, code: str, *extra: str) -> tuple[Child, Path]:
    """`code` started with a file to write once ready (argv[1]) and `extra`; returns once it wrote it."""
    flag = tmp_path / f"ready-{time.monotonic_ns()}"
    child = start([PY, "-c", code, str(flag), *extra])
    wait_until(lambda: flag.exists() and flag.read_text(), 30, 0.01, what="the child to be ready")
    return child, flag


# ---------------------------------------------------------------- starting


def test_output_is_appended_to_a_log_file_with_env_and_cwd_as_given(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"
    log.parent.mkdir()
    log.write_text("earlier line\n")
    code = (
        "import os, sys; print(os.getcwd(), flush=True); print(os.environ['ONLY_HERE'], flush=True); "
        "print('oops', file=sys.stderr)"
    )
    child = start([PY, "-c", code], env={**os.environ, "ONLY_HERE": "yes"}, cwd=tmp_path, stdout=log, stderr=STDOUT)
    assert child.wait(30) == 0
    assert log.read_text().splitlines() == ["earlier line", str(tmp_path), "yes", "oops"]


def test_a_log_file_in_a_missing_directory_is_made(tmp_path: Path) -> None:
    log = tmp_path / "new" / "dir" / "child.log"
    assert start([PY, "-c", "print('hello')"], stdout=log).wait(30) == 0
    assert log.read_text() == "hello\n"


def test_a_child_leads_its_own_session_unless_told_not_to(tmp_path: Path) -> None:
    with start([PY, "-c", "import time; time.sleep(60)"]) as child:
        assert os.getsid(child.pid) == child.pid and os.getpgid(child.pid) == child.pid
        assert os.getsid(child.pid) != os.getsid(0)
    with start([PY, "-c", "import time; time.sleep(60)"], new_session=False) as shared:
        assert os.getpgid(shared.pid) == os.getpgid(0)
        assert not shared.own_group


def test_input_reaches_stdin_and_pipes_come_back_as_text(tmp_path: Path) -> None:
    child = start([PY, "-c", "import sys; print(sys.stdin.read()[::-1])"], input="secret", stdout=PIPE, text=True)
    assert child.communicate(30) == ("terces\n", None)
    assert child.returncode == 0 and child.out == "terces\n"


def test_a_child_filling_its_pipe_can_still_be_waited_for(tmp_path: Path) -> None:
    """1 MiB is far more than a pipe holds: a wait that did not read would never return."""
    child = start(
        [PY, "-c", "import sys; sys.stdout.write('x' * (1 << 20)); sys.stderr.write('done')"], stdout=PIPE, stderr=PIPE
    )
    assert child.wait(30) == 0
    assert child.out == b"x" * (1 << 20) and child.err == b"done"


def test_a_child_reads_nothing_of_ours_by_default(tmp_path: Path) -> None:
    child = start([PY, "-c", "import sys; print(repr(sys.stdin.read()))"], stdout=PIPE, text=True)
    assert child.wait(30) == 0 and child.out == "''\n"
    quiet = start([PY, "-c", "print('unseen')"], stdout=DEVNULL)
    assert quiet.wait(30) == 0 and quiet.out is None


# ---------------------------------------------------------------- polling and waiting


def test_poll_alive_and_returncode_follow_the_child(tmp_path: Path) -> None:
    go = tmp_path / "go"
    child = start(
        [
            PY,
            "-c",
            f"import pathlib, sys, time\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\nsys.exit(5)",
        ]
    )
    assert child.alive and child.poll() is None and child.returncode is None and child.state() == "running"
    go.touch()
    assert wait_until(child.poll, 30, 0.01, what="the child to exit") == 5
    assert not child.alive and child.returncode == 5 and child.state() == "exit code 5"


def test_wait_with_a_timeout_raises_like_popen_and_leaves_the_child_running(tmp_path: Path) -> None:
    with start([PY, "-c", "import time; time.sleep(60)"]) as child:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.1)
        assert child.alive


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


# ---------------------------------------------------------------- stopping


def test_stop_sends_sigterm_and_returns_the_exit_code(tmp_path: Path) -> None:
    child, _ = start_ready(tmp_path, HANDLES_SIGTERM)
    assert child.stop(timeout=30) == 3
    assert not child.forced


def test_stop_can_send_sigint_as_ctrl_c_does(tmp_path: Path) -> None:
    child, _ = start_ready(tmp_path, HANDLES_SIGTERM)
    # No handler for SIGINT: Python raises KeyboardInterrupt, and an uncaught one exits by SIGINT.
    assert child.stop(signal.SIGINT, timeout=30) == -signal.SIGINT


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    child, _ = start_ready(tmp_path, IGNORES_SIGTERM)
    began = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - began >= 0.5, "killed before its time was up"
    assert child.forced


def test_stop_is_idempotent_and_stopping_an_exited_child_returns_its_code(tmp_path: Path) -> None:
    child, _ = start_ready(tmp_path, HANDLES_SIGTERM)
    assert child.stop(timeout=30) == 3
    assert child.stop(timeout=30) == 3
    assert not child.send_signal(signal.SIGTERM)
    done = start([PY, "-c", "raise SystemExit(4)"])
    wait_until(lambda: done.poll() is not None, 30, 0.01, what="the child to exit on its own")
    assert done.stop() == 4 and not done.forced


def test_stop_with_no_signal_lets_the_child_finish_and_collects_its_output(tmp_path: Path) -> None:
    child = start([PY, "-c", "import time; time.sleep(0.2); print('finished')"], stdout=PIPE, text=True)
    assert child.stop(None, timeout=30) == 0 and not child.forced and child.out == "finished\n"
    stuck = start([PY, "-c", "import time; time.sleep(60)"], stdout=PIPE, text=True)
    assert stuck.stop(None, timeout=0.2) == -signal.SIGKILL and stuck.forced


def test_stop_reaches_a_grandchild_the_child_left_behind(tmp_path: Path) -> None:
    """SIGTERM to the child alone kills it (no handler); the grandchild it started, ignoring SIGTERM, is killed too."""
    noted = tmp_path / "noted"
    child, pid_file = start_ready(tmp_path, GRANDPARENT, str(noted), "stay")
    grandchild = int(pid_file.read_text())
    assert running(grandchild)
    assert child.stop(timeout=30) == -signal.SIGTERM
    wait_until(lambda: not running(grandchild), 10, 0.01, what=f"the grandchild (pid {grandchild}) to be gone")
    assert not noted.exists(), "the grandchild was sent the child's stop signal: only the child should be"


def test_stop_with_group_sends_the_signal_to_the_grandchild_too(tmp_path: Path) -> None:
    noted = tmp_path / "noted"
    child, pid_file = start_ready(tmp_path, GRANDPARENT, str(noted), "stay")
    grandchild = int(pid_file.read_text())
    child.stop(timeout=30, group=True)
    wait_until(lambda: noted.exists() and noted.read_text(), 10, 0.01, what="the grandchild to note its signal")
    assert noted.read_text() == "SIGTERM"
    wait_until(lambda: not running(grandchild), 10, 0.01, what=f"the grandchild (pid {grandchild}) to be gone")


def test_when_a_child_exits_on_its_own_its_group_goes_with_it_once_noticed(tmp_path: Path) -> None:
    noted = tmp_path / "noted"
    child, pid_file = start_ready(tmp_path, GRANDPARENT, str(noted), "exit")
    grandchild = int(pid_file.read_text())
    wait_until(lambda: child.poll() is not None, 30, 0.01, what="the child to exit")
    assert child.returncode == 0
    wait_until(lambda: not running(grandchild), 10, 0.01, what=f"the grandchild (pid {grandchild}) to be gone")


def test_kill_sigkills_the_whole_group_without_waiting(tmp_path: Path) -> None:
    child, pid_file = start_ready(tmp_path, GRANDPARENT, str(tmp_path / "noted"), "stay")
    grandchild = int(pid_file.read_text())
    child.kill()
    assert child.wait(30) == -signal.SIGKILL
    wait_until(lambda: not running(grandchild), 10, 0.01, what=f"the grandchild (pid {grandchild}) to be gone")


def test_a_with_block_always_stops_the_child(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with start([PY, "-c", "import time; time.sleep(60)"]) as child:
            pid = child.pid
            raise RuntimeError("boom")
    assert child.returncode == -signal.SIGTERM and not running(pid)


# ---------------------------------------------------------------- wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = iter([None, 0, "", {"height": 7}])
    assert wait_until(lambda: next(calls), 5, 0.001, what="a head") == {"height": 7}


def test_wait_until_raises_a_timeout_naming_what_it_waited_for() -> None:
    began = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"^timed out after 0\.2 s waiting for the moon to turn blue$") as caught:
        wait_until(lambda: False, 0.2, 0.01, what="the moon to turn blue")
    assert time.monotonic() - began >= 0.2
    assert isinstance(caught.value, TimeoutError) and caught.value.what == "the moon to turn blue"


def test_wait_until_asks_once_more_at_the_deadline_instead_of_oversleeping() -> None:
    began = time.monotonic()
    # A 10 s interval and a 0.3 s timeout: one call now, one at the deadline, when the condition holds.
    assert wait_until(lambda: time.monotonic() - began >= 0.25, 0.3, 10, what="a quarter second")
    assert time.monotonic() - began < 5


def test_an_error_in_the_condition_ends_the_wait_at_once() -> None:
    def broken() -> bool:
        raise ProcessLookupError("the child died")

    began = time.monotonic()
    with pytest.raises(ProcessLookupError, match="the child died"):
        wait_until(broken, 30, 0.01, what="anything")
    assert time.monotonic() - began < 5


def test_a_stop_request_ends_the_pause_between_calls() -> None:
    stop = threading.Event()
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    began = time.monotonic()
    try:
        assert wait_until(stop.is_set, 30, 60, what="the stop request", sleep=stop.wait)
    finally:
        timer.cancel()
    assert time.monotonic() - began < 10
