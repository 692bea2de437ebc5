"""Start Streamlit on the dashboard app (what `cityledger dashboard` runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from ledger.home import Home

APP = Path(__file__).with_name("app.py")


def streamlit_argv(port: int, address: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--client.showErrorDetails",
        "none",
    ]


def exec_streamlit(home: Home, port: int) -> NoReturn:
    os.environ["CITYLEDGER_HOME"] = str(home.root)
    address = os.environ.get("CITYLEDGER_DASHBOARD_ADDRESS", "127.0.0.1")
    argv = streamlit_argv(port, address)
    os.execv(argv[0], argv)
