"""The command line's own rules: where options may stand, and environment defaults."""

from __future__ import annotations

import pytest

from ledger.cli.commands import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--home", "/h", "status"],
        ["status", "--home", "/h"],
        ["--home", "/h", "devices", "list"],
        ["devices", "list", "--home", "/h"],
    ],
)
def test_common_options_work_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).home == "/h"


def test_environment_gives_the_default_and_a_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYLEDGER_HOME", "/env")
    monkeypatch.setenv("CITYLEDGER_MQTT_PORT", "2883")
    args = build_parser().parse_args(["status"])
    assert (args.home, args.mqtt_port) == ("/env", 2883)
    assert build_parser().parse_args(["status", "--mqtt-port", "3883"]).mqtt_port == 3883
