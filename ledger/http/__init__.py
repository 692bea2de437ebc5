"""The city's HTTP API (`cityledger api`): FastAPI over the same LedgerAPI as the CLI and the dashboard.

A thin shell. It authenticates the caller's token, asks the pure rule (ledger/people/tokens.py)
whether the token's scope or a sharing grant covers the request, calls the ledger's API
(over its socket while ingest runs), and turns the answer into JSON, CSV or Parquet. It
opens no database itself (import-linter checks it).
"""
