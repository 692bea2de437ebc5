"""What the ledger keeps on disk: the DuckDB schema and migrations, the store with its
queries, the audit in SQL, the registry check, the Parquet archive, and a witness's files."""
