"""`cityledger systemd-units`: the rendered units say what a server needs, and systemd accepts them.

Rendering is checked as text (restart policy, user, home, order, confinement), and
the files the real command writes are given to `systemd-analyze verify`, which
parses them as systemd would and checks that every executable and every unit
they name exists. It runs without systemd as PID 1, so it works in a container.
It exits 0 on mere warnings (an unknown key, a bad value), so the test also
requires it to print nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.city.systemd_units import ALL_PARTS, UnitSettings, quote, render_units, this_executable

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _settings(**kw: object) -> UnitSettings:
    base: dict[str, object] = {
        "home": Path("/srv/cityledger"),
        "user": "cityledger",
        "executable": Path("/opt/cityledger/.venv/bin/cityledger"),
    }
    return UnitSettings(**{**base, **kw})  # type: ignore[arg-type]


def _settings_lines(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_each_part_restarts_on_failure_as_its_user_in_its_home_under_confinement() -> None:
    units = render_units(_settings(parts=ALL_PARTS))
    assert set(units) == {f"cityledger-{p}.service" for p in ALL_PARTS} | {"cityledger.target"}
    for part in ALL_PARTS:
        s = _settings_lines(units[f"cityledger-{part}.service"])
        assert s["Restart"] == ["on-failure"] and s["RestartSec"] == ["2"]
        assert s["StartLimitIntervalSec"] == ["0"]  # never given up on, as under `cityledger up`
        assert s["User"] == ["cityledger"]
        assert "CITYLEDGER_HOME=/srv/cityledger" in s["Environment"]
        assert s["WorkingDirectory"] == ["/srv/cityledger"]
        assert s["ExecStart"][0].startswith(f"/opt/cityledger/.venv/bin/cityledger {part}")
        for hardening in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/srv/cityledger",
            "ProtectHome=tmpfs",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "UMask=0077",
            "CapabilityBoundingSet=",
            "RestrictSUIDSGID=yes",
            "SystemCallFilter=@system-service",
        ):
            key, value = hardening.split("=", 1)
            assert s[key] == [value], (part, hardening)
        assert s["WantedBy"] == ["cityledger.target"] and s["PartOf"] == ["cityledger.target"]
    target = _settings_lines(units["cityledger.target"])
    assert target["Wants"] == [" ".join(f"cityledger-{p}.service" for p in ALL_PARTS)]


def test_broker_before_ingest_before_what_reads_the_ledger() -> None:
    units = {name: _settings_lines(text) for name, text in render_units(_settings(parts=ALL_PARTS)).items()}
    assert "Requires" not in units["cityledger-broker.service"]
    assert units["cityledger-ingest.service"]["Requires"] == ["cityledger-broker.service"]
    assert "cityledger-broker.service" in units["cityledger-ingest.service"]["After"][0]
    for part in ("scheduler", "dashboard", "fleet"):
        assert "cityledger-ingest.service" in units[f"cityledger-{part}.service"]["Requires"][0].split()
        assert "cityledger-ingest.service" in units[f"cityledger-{part}.service"]["After"][0].split()
    # Ingest counts as started once its local API socket exists, so what comes after asks it.
    assert "-S /srv/cityledger/ingest.sock" in units["cityledger-ingest.service"]["ExecStartPost"][0]
    # A part not rendered (a broker run elsewhere) is not required.
    alone = _settings_lines(render_units(_settings(parts=("ingest",)))["cityledger-ingest.service"])
    assert "Requires" not in alone and alone["After"] == ["network.target"]


def test_the_flags_of_the_installation_reach_the_units() -> None:
    units = render_units(
        _settings(
            parts=ALL_PARTS,
            mqtt_port=1884,
            mqtt_ca="/srv/ca.pem",
            dashboard_port=80,
            fleet_devices=7,
            fleet_interval=0.5,
            prefix="city2",
            group="city",
        )
    )
    dash = _settings_lines(units["city2-dashboard.service"])
    assert dash["ExecStart"] == ["/opt/cityledger/.venv/bin/cityledger dashboard --port 80"]
    assert dash["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]  # port 80: the one capability it needs
    assert dash["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"] and dash["Group"] == ["city"]
    ingest = _settings_lines(units["city2-ingest.service"])
    assert {"CITYLEDGER_MQTT_PORT=1884", "CITYLEDGER_MQTT_CA=/srv/ca.pem"} <= set(ingest["Environment"])
    assert "AmbientCapabilities" not in ingest and ingest["Requires"] == ["city2-broker.service"]
    fleet = _settings_lines(units["city2-fleet.service"])
    assert fleet["ExecStart"] == ["/opt/cityledger/.venv/bin/cityledger fleet --devices 7 --interval 0.5"]
    assert "city2.target" in units


def test_homes_and_code_that_protect_home_would_hide_are_bound_back_in() -> None:
    s = _settings_lines(
        render_units(
            _settings(home=Path("/home/ops/city"), code_paths=(Path("/root/.pyenv/versions/3.11.7"), Path("/usr")))
        )["cityledger-broker.service"]
    )
    assert s["BindPaths"] == ["/home/ops/city"] and s["ReadWritePaths"] == ["/home/ops/city"]
    assert s["BindReadOnlyPaths"] == ["/root/.pyenv/versions/3.11.7"]
    tmp = render_units(_settings(home=Path("/tmp/city")))["cityledger-broker.service"]
    assert "PrivateTmp=yes" not in tmp  # it would hide the home


def test_odd_paths_are_quoted_and_line_breaks_refused() -> None:
    assert quote("/srv/a b") == '"/srv/a b"'
    assert quote("50%") == "50%%"
    assert quote("$HOME", command=True) == "$$HOME"
    assert quote('say "hi"') == '"say \\"hi\\""'
    units = render_units(_settings(home=Path("/srv/city 50%")))
    s = _settings_lines(units["cityledger-ingest.service"])
    assert s["WorkingDirectory"] == ["/srv/city 50%%"]  # a path to the end of the line: not quoted
    assert '"CITYLEDGER_HOME=/srv/city 50%%"' in s["Environment"]
    with pytest.raises(ValueError, match="line break"):
        render_units(_settings(home=Path("/srv/evil\nExecStartPre=/bin/sh")))
    with pytest.raises(ValueError, match="unknown parts"):
        render_units(_settings(parts=("broker", "mailer")))


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine")
def test_the_written_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    home, out = tmp_path / "city home 50%", tmp_path / "units"
    home.mkdir()
    cmd = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "--home",
            str(home),
            "systemd-units",
            "--out",
            str(out),
            "--parts",
            ",".join(ALL_PARTS),
            "--user",
            "nobody-in-particular",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CITYLEDGER_HOME": str(home)},
    )
    assert cmd.returncode == 0, cmd.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted([f"cityledger-{p}.service" for p in ALL_PARTS] + ["cityledger.target"])
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files)
    assert f"ExecStart={this_executable()} ingest" in (out / "cityledger-ingest.service").read_text()
    # From the output directory: verify finds the units named by Requires= there.
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *[f.name for f in files]], cwd=out, capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine")
def test_systemd_analyze_verify_catches_what_the_test_above_relies_on(tmp_path: Path) -> None:
    """verify is a real check here: a misspelt key, a missing executable or unit are reported."""
    units = render_units(_settings(home=tmp_path, executable=this_executable()))
    broken = units["cityledger-ingest.service"].replace("Restart=on-failure", "Restart=on-failur")
    (tmp_path / "cityledger-ingest.service").write_text(broken)  # and its broker unit is missing
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "cityledger-ingest.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = verify.stdout + verify.stderr
    assert "on-failur" in said and "cityledger-broker.service" in said, said
