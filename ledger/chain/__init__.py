"""The chain core: the protocol, Merkle proofs, blocks, receipts, key rules and the audit.

Pure functions over plain data; nothing here opens a file, a socket or a database
(registry_audit's query layer and witness's store of accepted headers are the exceptions,
noted in docs/architecture.md)."""
