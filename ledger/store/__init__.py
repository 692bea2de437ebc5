"""The DuckDB file: its schema and migrations, the store with its queries, the audit in SQL, the archive."""
