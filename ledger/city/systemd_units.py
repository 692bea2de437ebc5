"""systemd units for a real server: one service per long-running part, and a target for all.

On a server the parts run under systemd rather than `cityledger up`: systemd
restarts a part that fails (`Restart=on-failure`), orders them (broker, then
ingest, then what reads the ledger), runs them as an unprivileged user, and
confines them: the whole file system read-only except the home, no new
privileges, no devices, no other users' home directories, files created 0600.

Rendering is a pure function of `UnitSettings` (string templates, no I/O), so
it is tested by comparing text and by `systemd-analyze verify` on the result;
`cityledger systemd-units` fills the settings from the running installation and
writes the files (ledger/cli/city.py).

Quoting follows systemd.service(5) and systemd.unit(5): a word with a space or
quote is double-quoted with backslash escapes, `%` is doubled everywhere (unit
specifiers), and `$` is doubled on command lines (variable expansion).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

TARGET = "target"
# Parts rendered by default. The fleet is a simulator (a real city's devices are on the
# street); `anchor` replaces ingest on a city-of-districts home; both on request.
DEFAULT_PARTS = ("broker", "ingest", "scheduler", "dashboard", "api", "serve")
ALL_PARTS = ("broker", "ingest", "fleet", "scheduler", "dashboard", "api", "serve")
# Directories ProtectHome= hides; a home or an installation under one of them is bound back in.
HIDDEN_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
TEMP_DIRS = (Path("/tmp"), Path("/var/tmp"))  # PrivateTmp= replaces them


@dataclass(frozen=True)
class UnitSettings:
    """Everything the units say; `cityledger systemd-units` fills it from the installation."""

    home: Path  # CITYLEDGER_HOME, absolute
    user: str
    executable: Path  # the `cityledger` console script, absolute
    group: str | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_ca: str = ""
    dashboard_port: int = 8501
    api_port: int = 8480
    log_port: int = 8470
    fleet_devices: int = 40
    fleet_interval: float = 5.0
    parts: tuple[str, ...] = DEFAULT_PARTS
    prefix: str = "cityledger"
    restart_sec: float = 2.0
    # Directories the code runs from (the venv, the source tree): bound in read-only if hidden.
    code_paths: tuple[Path, ...] = field(default_factory=tuple)

    def unit_name(self, part: str) -> str:
        return f"{self.prefix}.target" if part == TARGET else f"{self.prefix}-{part}.service"


@dataclass(frozen=True)
class _Part:
    description: str
    requires: tuple[str, ...]  # parts that must run first (Requires= and After=)


PARTS: dict[str, _Part] = {
    "broker": _Part("the project's Mosquitto (MQTT broker)", ()),
    "ingest": _Part("ingest: verify readings, seal them into blocks (sole owner of the DuckDB file)", ("broker",)),
    "fleet": _Part("a fleet of simulated devices", ("broker", "ingest")),
    "scheduler": _Part("periodic jobs: audits, anomaly scans, roll-ups, month-end close", ("ingest",)),
    "dashboard": _Part("the Streamlit dashboard", ("ingest",)),
    "api": _Part("the city's HTTP API for other systems", ("ingest",)),
    "serve": _Part("the transparency log's files over HTTP", ()),
}


def quote(word: str, *, command: bool = False) -> str:
    """One word of a unit file setting, quoted if need be (see the module docstring)."""
    out = _check(word).replace("%", "%%")
    if command:
        out = out.replace("$", "$$")
    if out and not any(c.isspace() or c in "\"'\\;" for c in out):
        return out
    return '"' + out.replace("\\", "\\\\").replace('"', '\\"') + '"'


def path_value(path: Path) -> str:
    """A setting that is one path to the end of the line (WorkingDirectory=, EnvironmentFile=): never quoted."""
    return _check(str(path)).replace("%", "%%")


def _check(word: str) -> str:
    if any(c in word for c in "\n\r\0"):
        raise ValueError(f"a unit file cannot carry a line break or NUL: {word!r}")
    return word


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _args(s: UnitSettings, part: str) -> list[str]:
    if part == "dashboard":
        return ["dashboard", "--port", str(s.dashboard_port)]
    if part == "api":
        return ["api", "--port", str(s.api_port)]
    if part == "serve":
        return ["serve", "--port", str(s.log_port)]
    if part == "fleet":
        return ["fleet", "--devices", str(s.fleet_devices), "--interval", f"{s.fleet_interval:g}"]
    return [part]


def _hardening(s: UnitSettings, part: str) -> list[str]:
    """The confinement every part gets; each line says what it takes away."""
    lines = [
        "NoNewPrivileges=yes",  # no setuid escalation, ever
        "ProtectSystem=strict",  # the whole file system read-only ...
        f"ReadWritePaths={quote(str(s.home))}",  # ... except the home
        # tmpfs, not yes: home directories vanish rather than turn unreadable. Streamlit opens
        # ~/.streamlit/secrets.toml at start and tolerates FileNotFoundError only, not EACCES.
        "ProtectHome=tmpfs",
    ]
    hidden_code = sorted({p for p in s.code_paths if _under(p, HIDDEN_HOMES)})
    if _under(s.home, HIDDEN_HOMES):
        lines.append(f"BindPaths={quote(str(s.home))}")
    if hidden_code:
        lines.append("BindReadOnlyPaths=" + " ".join(quote(str(p)) for p in hidden_code))
    ports = {"broker": s.mqtt_port, "dashboard": s.dashboard_port, "api": s.api_port, "serve": s.log_port}
    low_port = ports.get(part, 1024) < 1024
    if _under(s.home, TEMP_DIRS):
        lines.append(f"# no PrivateTmp=: the home {s.home} is in a temporary directory, which it would hide")
    else:
        lines.append("PrivateTmp=yes")
    lines += [
        "PrivateDevices=yes",
        "PrivateMounts=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        # What ordinary services need; no mount, module, reboot, swap, raw I/O, debugging, clock setting.
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        # Not MemoryDenyWriteExecute=: cffi (PyNaCl, cryptography) may need writable executable callbacks.
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        # No capability at all, unless the part must listen on a port below 1024.
        "CapabilityBoundingSet=" + ("CAP_NET_BIND_SERVICE" if low_port else ""),
    ]
    if low_port:
        lines.append("AmbientCapabilities=CAP_NET_BIND_SERVICE")
    lines.append("UMask=0077")  # keys, secrets and the database: owner only
    return lines


def render_service(s: UnitSettings, part: str) -> str:
    """The .service unit of one part."""
    spec = PARTS[part]
    deps = [s.unit_name(d) for d in spec.requires if d in s.parts]  # one not rendered runs elsewhere
    exec_start = " ".join(quote(w, command=True) for w in [str(s.executable), *_args(s, part)])
    env = [
        f"CITYLEDGER_HOME={s.home}",
        f"CITYLEDGER_MQTT_HOST={s.mqtt_host}",
        f"CITYLEDGER_MQTT_PORT={s.mqtt_port}",
        "PYTHONUNBUFFERED=1",
    ]
    if s.mqtt_ca:
        env.append(f"CITYLEDGER_MQTT_CA={s.mqtt_ca}")
    unit = [
        "# Rendered by `cityledger systemd-units`: render again rather than edit (docs/reliability.md).",
        "[Unit]",
        f"Description=cityledger {spec.description}",
        f"PartOf={s.unit_name(TARGET)}",
        "After=network.target" + "".join(f" {d}" for d in deps),
    ]
    if deps:
        unit.append("Requires=" + " ".join(deps))
    # Never give up on a part (as `cityledger up`): a crash loop is retried every RestartSec.
    unit.append("StartLimitIntervalSec=0")
    service = [
        "",
        "[Service]",
        "Type=simple",
        f"User={s.user}",
    ]
    if s.group:
        service.append(f"Group={s.group}")
    service += [
        f"WorkingDirectory={path_value(s.home)}",
        *(f"Environment={quote(e)}" for e in env),
        # Any other flag, as CITYLEDGER_<FLAG>=value (e.g. CITYLEDGER_WORKERS=2), without editing the unit.
        f"EnvironmentFile=-{path_value(s.home / 'cityledger.env')}",
        f"ExecStart={exec_start}",
    ]
    if part == "ingest":
        # Active only once its local API answers: what comes after it then asks ingest, and
        # never opens the database file itself (which would keep ingest from owning it).
        socket = shlex.quote(str(s.home / "ingest.sock"))
        script = f"until [ -S {socket} ]; do sleep 0.2; done"
        service.append(f"ExecStartPost=/bin/sh -c {quote(script, command=True)}")
        service.append("TimeoutStartSec=120")
    service += [
        "Restart=on-failure",
        f"RestartSec={s.restart_sec:g}",
        "TimeoutStopSec=30",
        *_hardening(s, part),
    ]
    install = ["", "[Install]", f"WantedBy={s.unit_name(TARGET)}"]
    return "\n".join(unit + service + install) + "\n"


def render_target(s: UnitSettings) -> str:
    """cityledger.target: `systemctl start|stop|enable cityledger.target` for every part at once."""
    wants = " ".join(s.unit_name(p) for p in s.parts)
    return (
        "\n".join(
            [
                "# Rendered by `cityledger systemd-units`: render again rather than edit (docs/reliability.md).",
                "[Unit]",
                "Description=cityledger: every long-running part",
                f"Wants={wants}",
                f"After={wants}",
                "",
                "[Install]",
                "WantedBy=multi-user.target",
            ]
        )
        + "\n"
    )


def render_units(s: UnitSettings) -> dict[str, str]:
    """File name -> text for every unit: one service per part in `s.parts`, and the target."""
    unknown = [p for p in s.parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {', '.join(ALL_PARTS)}")
    if not s.home.is_absolute() or not s.executable.is_absolute():
        raise ValueError("the home and the executable must be absolute paths")
    units = {s.unit_name(p): render_service(s, p) for p in ALL_PARTS if p in s.parts}
    units[s.unit_name(TARGET)] = render_target(s)
    return units


# ---------------------------------------------------------------- from this installation (I/O)


def this_executable() -> Path:
    """The `cityledger` script of the running installation: beside sys.executable (a venv's bin), else on PATH.

    sys.executable is not resolved: in a venv it is a link whose target lies outside the venv.
    """
    import shutil
    import sys

    sibling = Path(sys.executable).parent / "cityledger"
    if sibling.exists():
        return sibling.absolute()
    found = shutil.which("cityledger")
    if found is None:
        raise FileNotFoundError("no `cityledger` script beside this Python or on PATH: install the project first")
    return Path(found).absolute()


def home_owner(home: Path) -> str:
    """The owner of the home (its keys are 0600: only they can run the parts), else whoever runs this."""
    import os
    import pwd

    try:
        uid = home.stat().st_uid
    except FileNotFoundError:
        uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def code_paths() -> tuple[Path, ...]:
    """Where this installation's code lives: the venv, the base Python, the source tree (editable installs)."""
    import sys

    import ledger

    source = Path(ledger.__file__).resolve().parent.parent
    return tuple(sorted({Path(sys.prefix).absolute(), Path(sys.base_prefix).resolve(), source}))


def write_units(units: dict[str, str], out: Path) -> list[Path]:
    """Write the rendered files into `out` (created); 0644, as unit files are (they hold no secret)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(units.items()):
        path = out / name
        path.write_text(text)
        path.chmod(0o644)
        written.append(path)
    return written
