"""What every command group of `cityledger` shares: options, the ledger, and printing a result.

Each group module (ledger/cli/devices.py, billing.py, ...) declares its commands with
`add` and `group`, reaches the ledger with `ledger_api`, and prints a result as JSON
with `emit`, the one place a result becomes JSON: a typed result (a pydantic model, a
dataclass) is turned into plain data there and nowhere else.

Every flag made with `opt` also reads an environment variable CITYLEDGER_<NAME> (the
flag's name upper-cased, dashes as underscores), so a deployment configures all of it
in one place.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeAlias

from ledger.home import Home

Handler = Callable[[argparse.Namespace], int]
# What `add_subparsers` returns, that a group's `register` adds its commands to (argparse's class is private,
# and generic only to type checkers, hence the string).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# ---------------------------------------------------------------- options


def env_default(name: str, default: Any) -> Any:
    """The value of CITYLEDGER_<NAME> as the type of `default`, or `default` when it is not set."""
    raw = os.environ.get(f"CITYLEDGER_{name.upper().replace('-', '_')}")
    if raw is None:
        return default
    return type(default)(raw) if default is not None and not isinstance(default, bool) else raw


def opt(p: argparse.ArgumentParser, flag: str, default: Any, help: str, *, suppress: bool = False, **kw: Any) -> None:
    """An option whose default an environment variable may give (see the module's docstring)."""
    name = flag.lstrip("-")
    p.add_argument(
        flag,
        default=argparse.SUPPRESS if suppress else env_default(name, default),
        type=type(default) if default is not None else str,
        help=f"{help} (env CITYLEDGER_{name.upper().replace('-', '_')}; default {default})",
        **kw,
    )


def common_options(suppress: bool = False) -> argparse.ArgumentParser:
    """Options every command takes, before or after its name.

    A subcommand's copy defaults to SUPPRESS, or argparse would let its default
    overwrite a value given before the subcommand's name.
    """
    p = argparse.ArgumentParser(add_help=False)
    opt(p, "--home", "./var", "where keys, the database and broker files live", suppress=suppress)
    opt(p, "--mqtt-host", "127.0.0.1", "broker host", suppress=suppress)
    opt(p, "--mqtt-port", 1883, "broker port", suppress=suppress)
    opt(p, "--mqtt-ca", "", "CA certificate file: connect to the broker over TLS and verify it", suppress=suppress)
    opt(p, "--log-level", "INFO", "logging level", suppress=suppress)
    return p


@functools.cache
def _after_the_name() -> argparse.ArgumentParser:
    """The common options as every subcommand takes them (suppressed: they read no environment)."""
    return common_options(suppress=True)


def add(parent: Subcommands, name: str, handler: Handler, help: str, *, json: bool = False) -> argparse.ArgumentParser:
    """A command under `parent` (a subparsers action); `json` gives it the one `--json` flag (its result as
    JSON on standard output)."""
    p = parent.add_parser(name, help=help, description=help, parents=[_after_the_name()])
    p.set_defaults(handler=handler)
    if json:
        p.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
    return p


def group(parent: Subcommands, name: str, help: str) -> Subcommands:
    """A command that only holds actions (`cityledger NAME ACTION`): returns the subparsers to add them to."""
    g = add(parent, name, lambda a: 2, help)
    return g.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def operator_option(p: argparse.ArgumentParser) -> None:
    """--operator, for a command whose action is sealed under an operator's id."""
    p.add_argument(
        "--operator",
        help="your operator id, sealed with the action (env CITYLEDGER_OPERATOR; default: your login name)",
    )


# ---------------------------------------------------------------- what a handler reads


def home_of(args: argparse.Namespace) -> Home:
    return Home.from_env(args.home)


def ledger_api(args: argparse.Namespace) -> Any:
    """The ledger's API: the running ingest's over its socket, or the home's file opened here."""
    from ledger.service.rpc import open_ledger

    return open_ledger(home_of(args))


def operator_id(args: argparse.Namespace) -> str:
    """Who runs this command: every action reaching the ledger is sealed under an operator's id."""
    import getpass

    return args.operator or os.environ.get("CITYLEDGER_OPERATOR") or getpass.getuser()


def mqtt_tls(args: argparse.Namespace) -> Any:
    """--mqtt-ca as the TLS settings of a broker client (none without it)."""
    from broker.mqtt.tls import TLSSettings

    return TLSSettings.from_option(args.mqtt_ca)


def stop_on_signals() -> threading.Event:
    """An event SIGINT or SIGTERM sets: a long-running command stops cleanly when it is set."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


# ---------------------------------------------------------------- printing a result


def emit(result: Any, *, compact: bool = False) -> None:
    """Print a result as JSON on standard output: every command's JSON output goes through here.

    Indented with sorted keys; `compact`: on one line, keys in their own order (`fleet`'s closing stats).
    """
    if compact:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
