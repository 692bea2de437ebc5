"""What the ledger keeps on disk, and every SQL statement that reads or writes it: the DuckDB
schema and migrations, the store (chain and registry), the named queries of each concern
(billing_queries, accounts, device_days, districts, anomaly_queries, investigations, people, signin,
views), transactions, the audit in SQL, the registry check, the Parquet archive, and a
witness's files."""
