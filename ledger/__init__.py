"""The city ledger: the chain core, its store, billing and anomalies over it, the running
service, ingest, and the `cityledger` command. docs/architecture.md draws the floor plan."""
