"""The Streamlit dashboard: citizens' usage, bills and proofs; operators' city screens.
It asks the ledger's API and opens nothing itself."""
