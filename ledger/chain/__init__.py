"""The chain core: the protocol, Merkle proofs, blocks, receipts, key rules, the records a
block is built from, and the audit.

Pure functions over plain data: nothing here opens a file, a socket or a database, and
import-linter holds it to that (pyproject.toml, "The pure core ..."). What reads the
database for an audit lives in ledger/store/; a witness's files in ledger/store/witness_files.py."""
