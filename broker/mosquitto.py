"""Run and reload the real mosquitto broker with the project's configuration.

The top-level mosquitto.conf is both a runnable config and the template: it is
rendered for one home and port by rewriting only the lines that name a place,
so every tuning option stays reviewed in one file. Its TLS listener section is
kept (port and files substituted) only when TLS is asked for, and removed
otherwise, so a plain broker opens exactly one port.

What mosquitto 2.0.11 does that this module relies on (checked, not assumed):
- it writes `pid_file` in the foreground too, as the switched user and before
  it binds its listener, and removes it on exit, even a failed start (but not
  after SIGKILL, hence the liveness check in `running_pid`);
- run as root it switches to `user` (default "mosquitto") before reading the
  password file, so the rendered config names whoever renders it;
- SIGHUP re-reads the whole config, including the password and ACL files, and
  disconnects connected clients whose username is gone or whose password no
  longer matches (a re-salted hash of the same password keeps the client);
- its stdout log is block-buffered unless stdout is a terminal (see `_argv`);
- refusing an anonymous CONNECT under `use_username_as_clientid`, it removes the
  connected client with the requested id from its id table, which a reload turns
  into a crash (fixed in 2.0.13), hence `clientid_prefixes` (broker/mqtt/client_ids.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

from broker.certs import CertPaths, ensure_certs
from broker.mqtt.client_ids import CLIENT_ID_PREFIX
from ledger.home import Home, write_private
from ledger.processes import STDOUT, Child, Sink, WaitTimeout, wait_until
from ledger.processes import start as start_child

TEMPLATE: Path = Path(__file__).resolve().parent.parent / "mosquitto.conf"
TEMPLATE_ENV = "CITYLEDGER_MOSQUITTO_CONF"
FALLBACK_BINARY = "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0
LOG_NAME = "mosquitto.log"
# Options that make a listener a TLS listener.
TLS_FILE_OPTIONS = frozenset({"cafile", "capath", "certfile", "keyfile"})


@dataclass(frozen=True)
class TLSListener:
    """The TLS listener to render: its port and the files it serves."""

    port: int
    certs: CertPaths


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


def render_config(template: str, home: Home, port: int, bind: str = "127.0.0.1", tls: TLSListener | None = None) -> str:
    """The template with its listeners, files and user pointed at `home`.

    Options are replaced where they stand (a listener's own options follow its
    line); one the template lacks is appended. The TLS listener's section is
    rendered after everything else when `tls` is given and dropped when not. The
    client-id prefix options are always set from broker/mqtt/client_ids.py. No
    file is touched: the caller writes the result (only the effective user is
    looked up).
    """
    plain, tls_section = split_tls_section(template)
    _check_listener(plain, port, bind)
    values = {
        "listener": f"{port} {bind}",
        "password_file": _path_value(home.passwd),
        "acl_file": _path_value(home.acl),
        "persistence_location": _path_value(home.broker_data),
        "pid_file": _path_value(home.broker_pid),
        "user": current_user(),
        # Not left to the template: without these, a refused stranger can unseat a connected
        # client on mosquitto 2.0.11 (broker/mqtt/client_ids.py), so every rendered config has them.
        "clientid_prefixes": CLIENT_ID_PREFIX,
        "auto_id_prefix": CLIENT_ID_PREFIX,
    }
    text = _set_options(plain, values)
    if tls is None:
        return text
    if tls_section is None:
        raise ValueError("TLS was asked for but the template has no TLS listener section (a listener with certfile)")
    return text + _render_tls_section(tls_section, tls, port, bind)


def _render_tls_section(section: str, tls: TLSListener, plain_port: int, bind: str) -> str:
    """The TLS listener's lines with its port and files substituted (missing ones appended to it)."""
    if not 0 < tls.port < 65536 or tls.port == plain_port:
        raise ValueError(f"invalid TLS port {tls.port} (the plain listener has {plain_port})")
    values = {
        "listener": f"{tls.port} {bind}",
        "cafile": _path_value(tls.certs.ca),
        "certfile": _path_value(tls.certs.cert),
        "keyfile": _path_value(tls.certs.key),
    }
    options = [_option_name(line) for line in section.splitlines()]
    if "capath" in options:
        raise ValueError("the TLS listener must name its CA with cafile, not capath")
    return "\n" + _set_options(section, values)


def split_tls_section(template: str) -> tuple[str, str | None]:
    """(the template without its TLS listener section, that section or None).

    A listener's section runs from the comments just above its `listener` line
    to the next listener's (or the end); it is the TLS one when it sets one of
    the TLS_FILE_OPTIONS. More than one TLS section is a mistake. Everything in
    the section goes with it, so it must hold only that listener's options.
    """
    lines = template.splitlines()
    starts = _section_starts(lines)
    bounds = list(zip(starts, [*starts[1:], len(lines)]))
    tls = [(a, b) for a, b in bounds if any(_option_name(line) in TLS_FILE_OPTIONS for line in lines[a:b])]
    if len(tls) > 1:
        raise ValueError(f"the template must have at most one TLS listener, found {len(tls)}")
    if not tls:
        return template, None
    a, b = tls[0]
    plain = "\n".join(lines[:a] + lines[b:]).rstrip("\n") + "\n"
    return plain, "\n".join(lines[a:b]).strip("\n") + "\n"


def _section_starts(lines: list[str]) -> list[int]:
    """Where each listener's section starts: its line, or the comment and blank lines right above it."""
    starts = []
    for i, line in enumerate(lines):
        if _option_name(line) != "listener":
            continue
        start = i
        while start > 0 and _option_name(lines[start - 1]) is None:
            start -= 1  # stops at the previous section's last option (a listener line at the latest)
        starts.append(start)
    return starts


def _check_listener(template: str, port: int, bind: str) -> None:
    """Exactly one plain listener, a real port and a one-token address: anything else is a mistake."""
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    if not bind or any(c.isspace() for c in bind):
        raise ValueError(f"invalid bind address {bind!r}")
    listeners = [line for line in template.splitlines() if _option_name(line) == "listener"]
    if len(listeners) != 1:
        raise ValueError(f"the template must have exactly one plain listener line, found {len(listeners)}")


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


def write_config(home: Home, port: int, bind: str = "127.0.0.1", tls: TLSListener | None = None) -> Path:
    """Render the template into home.broker_config (0600) and prepare what the broker opens.

    Mosquitto refuses to start without its password and ACL files, so empty ones
    (nobody may connect) are written when write_access_files has not run yet.
    """
    text = render_config(template_path().read_text(), home, port, bind, tls)
    home.broker_data.mkdir(parents=True, exist_ok=True)
    home.broker_data.chmod(0o700)
    for path in (home.passwd, home.acl):
        if not path.exists():
            write_private(path, "")
    write_private(home.broker_config, text)
    return home.broker_config


def tls_listener(home: Home, tls_port: int | None, certs: CertPaths | None = None) -> TLSListener | None:
    """The TLS listener for `tls_port` (None: plain only), with `certs` or the home's generated ones."""
    if tls_port is None:
        if certs is not None:
            raise ValueError("TLS files were given but no TLS port")
        return None
    return TLSListener(tls_port, certs if certs is not None else ensure_certs(home))


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


def exec_foreground(home: Home, port: int, tls_port: int | None = None, *, certs: CertPaths | None = None) -> NoReturn:
    """Become the broker (for `cityledger broker`): the pid stays, so mosquitto's pid file is right.

    With `tls_port` it also listens for MQTT over TLS there, serving `certs` or,
    by default, the home's generated CA and server certificate (made if missing).
    """
    argv = _argv(write_config(home, port, tls=tls_listener(home, tls_port, certs)))
    os.execv(argv[0], argv)


def start(
    home: Home,
    port: int,
    tls_port: int | None = None,
    *,
    certs: CertPaths | None = None,
    stdout: IO[bytes] | int | None = None,
) -> Child:
    """Start the broker in the background and return once it accepts TCP connections on every listener.

    `tls_port` and `certs` are as for `exec_foreground`. Output goes to `stdout`,
    or by default is appended to `log_path(home)` (a pipe nobody reads would
    stall the broker once full). On failure the broker is stopped and the error
    carries what it logged. Stop the broker with `stop()` on what this returns
    (SIGTERM: mosquitto saves its persistence file on the way out).
    """
    argv = _argv(write_config(home, port, tls=tls_listener(home, tls_port, certs)))
    log_file, log_offset = log_path(home), 0
    own_log = stdout is None
    sink: Sink = stdout
    if own_log:
        log_offset = log_file.stat().st_size if log_file.exists() else 0
        sink = log_file
    broker = start_child(argv, stdout=sink, stderr=STDOUT)
    try:
        _wait_listening(broker, "127.0.0.1", [p for p in (port, tls_port) if p is not None])
    except (RuntimeError, WaitTimeout) as exc:
        broker.stop(signal.SIGKILL)
        output = _read_from(log_file, log_offset) if own_log else "(output went to the given stdout)"
        raise RuntimeError(f"{exc}\n--- mosquitto output ---\n{output}") from None
    return broker


def _wait_listening(broker: Child, host: str, ports: list[int]) -> None:
    """Poll until `broker` itself listens on every port and each accepts TCP (WaitTimeout after START_TIMEOUT_S).

    "The port accepts" alone is not enough: when another process holds the port,
    mosquitto takes a few milliseconds to fail its bind and exit, and in that
    window the other listener would pass for ours.
    """
    named = " and ".join(map(str, ports))

    def listening() -> bool:
        if not broker.alive:
            raise RuntimeError(f"mosquitto exited with status {broker.returncode} before listening on {named}")
        return all(_owns_listener(broker.pid, port) is not False and _accepts(host, port) for port in ports)

    wait_until(listening, START_TIMEOUT_S, 0.02, what=f"mosquitto to listen on {host}:{named}")


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
    inodes: set[str] = set()
    for row in proc_net_tcp.splitlines()[1:]:
        fields = row.split()
        if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process `pid` has open (empty if we may not look)."""
    inodes: set[str] = set()
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
