"""Run and reload the real mosquitto broker with the project's configuration.

The top-level mosquitto.conf is both a runnable config and the template: it is
rendered for one home and port by rewriting only the lines that name a place,
so every tuning option stays reviewed in one file.

What mosquitto 2.0.11 does that this module relies on (checked, not assumed):
- it writes `pid_file` in the foreground too, as the switched user and before
  it binds its listener, and removes it on exit, even a failed start (but not
  after SIGKILL, hence the liveness check in `running_pid`);
- run as root it switches to `user` (default "mosquitto") before reading the
  password file, so the rendered config names whoever renders it;
- SIGHUP re-reads the whole config, including the password and ACL files, and
  disconnects connected clients whose username is gone or whose password no
  longer matches (a re-salted hash of the same password keeps the client);
- its stdout log is block-buffered unless stdout is a terminal (see `_argv`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, NoReturn

from ledger.home import Home, write_private

TEMPLATE: Path = Path(__file__).resolve().parent.parent / "mosquitto.conf"
TEMPLATE_ENV = "CITYLEDGER_MOSQUITTO_CONF"
FALLBACK_BINARY = "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0
LOG_NAME = "mosquitto.log"


def mosquitto_binary() -> str:
    """The mosquitto executable, or a RuntimeError that says how to get one."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(FALLBACK_BINARY, os.X_OK):
        return FALLBACK_BINARY
    raise RuntimeError(
        "mosquitto (MQTT broker, 2.0 or later) is not installed: "
        "install it with `apt-get install mosquitto` (Debian/Ubuntu) or `brew install mosquitto`"
    )


def template_path() -> Path:
    """The config template: $CITYLEDGER_MOSQUITTO_CONF (read at call time) or the repository's."""
    override = os.environ.get(TEMPLATE_ENV)
    return Path(override) if override else TEMPLATE


def current_user() -> str:
    """The name of the effective user, which the broker must run as to read our 0600 files."""
    return pwd.getpwuid(os.geteuid()).pw_name


# ---------------------------------------------------------------- rendering


def render_config(template: str, home: Home, port: int, bind: str = "127.0.0.1") -> str:
    """The template with its listener, files and user pointed at `home`.

    Options are replaced where they stand (a listener's own options follow its
    line); one the template lacks is appended. No file is touched: the caller
    writes the result (only the effective user is looked up).
    """
    _check_listener(template, port, bind)
    values = {
        "listener": f"{port} {bind}",
        "password_file": _path_value(home.passwd),
        "acl_file": _path_value(home.acl),
        "persistence_location": _path_value(home.broker_data),
        "pid_file": _path_value(home.broker_pid),
        "user": current_user(),
    }
    return _set_options(template, values)


def _check_listener(template: str, port: int, bind: str) -> None:
    """Exactly one listener, a real port and a one-token address: anything else is a mistake."""
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    if not bind or any(c.isspace() for c in bind):
        raise ValueError(f"invalid bind address {bind!r}")
    listeners = [line for line in template.splitlines() if _option_name(line) == "listener"]
    if len(listeners) != 1:
        raise ValueError(f"the template must have exactly one listener line, found {len(listeners)}")


def _path_value(path: Path) -> str:
    """An absolute path as a config value; a newline would start a new option."""
    text = os.path.abspath(path)
    if "\n" in text or "\r" in text:
        raise ValueError(f"unusable path for mosquitto: {text!r}")
    return text


def _option_name(line: str) -> str | None:
    """The option a config line sets, or None for comments and blank lines."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.split(None, 1)[0]


def _set_options(template: str, values: Mapping[str, str]) -> str:
    """Replace each named option's first line in place; append the ones missing."""
    pending = dict(values)
    lines = []
    for line in template.splitlines():
        name = _option_name(line)
        if name in pending:
            line = f"{name} {pending.pop(name)}"
        elif name in values:
            continue  # a second occurrence would override the rendered value
        lines.append(line)
    for name, value in pending.items():
        lines += ["", "# Added by broker/mosquitto.py for this installation.", f"{name} {value}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- files


def write_config(home: Home, port: int, bind: str = "127.0.0.1") -> Path:
    """Render the template into home.broker_config (0600) and prepare what the broker opens.

    Mosquitto refuses to start without its password and ACL files, so empty ones
    (nobody may connect) are written when write_access_files has not run yet.
    """
    text = render_config(template_path().read_text(), home, port, bind)
    home.broker_data.mkdir(parents=True, exist_ok=True)
    home.broker_data.chmod(0o700)
    for path in (home.passwd, home.acl):
        if not path.exists():
            write_private(path, "")
    write_private(home.broker_config, text)
    return home.broker_config


def log_path(home: Home) -> Path:
    """Where `start` appends the broker's output unless told otherwise."""
    return home.logs / LOG_NAME


def _argv(config: Path) -> list[str]:
    """The command line, line-buffered where coreutils' stdbuf exists.

    Mosquitto's stdout log is block-buffered when stdout is a file or a pipe, so
    without stdbuf its log lines (and the "Reloading config." that tests wait on)
    appear only kilobytes later, or never if the broker is killed.
    """
    command = [mosquitto_binary(), "-c", str(config)]
    stdbuf = shutil.which("stdbuf")
    return [stdbuf, "-oL", *command] if stdbuf else command


# ---------------------------------------------------------------- running


def exec_foreground(home: Home, port: int) -> NoReturn:
    """Become the broker (for `cityledger broker`): the pid stays, so mosquitto's pid file is right."""
    argv = _argv(write_config(home, port))
    os.execv(argv[0], argv)


def start(home: Home, port: int, *, stdout: IO[bytes] | int | None = None) -> subprocess.Popen[bytes]:
    """Start the broker in the background and return once it accepts TCP connections.

    Output goes to `stdout`, or by default is appended to `log_path(home)` (a pipe
    nobody reads would stall the broker once full). On failure the broker is
    stopped and the error carries what it logged.
    """
    argv = _argv(write_config(home, port))
    log_file, log_offset = log_path(home), 0
    own_log = stdout is None
    if own_log:
        home.logs.mkdir(parents=True, exist_ok=True)
        log_offset = log_file.stat().st_size if log_file.exists() else 0
        with log_file.open("ab") as log:
            proc = _spawn(argv, log)
    else:
        proc = _spawn(argv, stdout)
    try:
        _wait_listening(proc, "127.0.0.1", port, START_TIMEOUT_S)
    except RuntimeError as exc:
        _stop_quietly(proc)
        output = _read_from(log_file, log_offset) if own_log else "(output went to the given stdout)"
        raise RuntimeError(f"{exc}\n--- mosquitto output ---\n{output}") from None
    return proc


def _spawn(argv: list[str], stdout: IO[bytes] | int | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float) -> None:
    """Poll until `proc` itself listens on `port` and the port accepts TCP.

    "The port accepts" alone is not enough: when another process holds the port,
    mosquitto takes a few milliseconds to fail its bind and exit, and in that
    window the other listener would pass for ours.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with status {proc.returncode} before listening on {port}")
        if _owns_listener(proc.pid, port) is not False and _accepts(host, port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on {host}:{port} within {timeout:.0f} s")


def _owns_listener(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds a listening TCP socket on `port`; None without Linux /proc."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return None
    listening: set[str] = set()
    for table in tables:
        try:
            listening |= listening_inodes(table.read_text(), port)
        except OSError:
            continue
    return bool(listening & _socket_inodes(pid))


def listening_inodes(proc_net_tcp: str, port: int) -> set[str]:
    """Socket inodes in LISTEN state (0A) on `port`, parsed from /proc/net/tcp text."""
    inodes = set()
    for row in proc_net_tcp.splitlines()[1:]:
        fields = row.split()
        if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process `pid` has open (empty if we may not look)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_quietly(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


# ---------------------------------------------------------------- reloading


def running_pid(home: Home) -> int | None:
    """The pid of the home's broker if it is alive, else None.

    The pid file outlives a killed broker, and its pid may since belong to another
    process, so the process must still be a mosquitto (checked where /proc exists).
    """
    try:
        pid = int(home.broker_pid.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _alive(pid):
        return None
    return pid if _is_mosquitto(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but someone else's: sending the signal will say so
    return True


def _is_mosquitto(pid: int) -> bool:
    """False for a recycled pid or a zombie (whose cmdline is empty)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        return True  # no /proc: trust the pid file
    try:
        argv0 = cmdline.read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(argv0.decode(errors="replace")) == "mosquitto"


def reload(home: Home) -> bool:
    """Make the running broker re-read the password and ACL files (SIGHUP).

    Returns False when no broker of this home runs. The signal is asynchronous:
    the new files are in force shortly after this returns, not when it returns.
    """
    pid = running_pid(home)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True
