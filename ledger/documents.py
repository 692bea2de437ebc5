"""How cityledger declares the type of a JSON document it hands out (a bill, a receipt, a row).

A result is declared as a TypedDict where it is made (docs/architecture.md says why), and
decorated with `document`: pydantic, which validates every answer the socket's client
receives (ledger/service/rpc.py), then refuses a key the declaration does not name, instead
of dropping it silently. It sits in the bottom layer so that every layer, the pure core
included, declares its documents the same way.
"""

from __future__ import annotations

from pydantic import ConfigDict, with_config

document = with_config(ConfigDict(extra="forbid"))
