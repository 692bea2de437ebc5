"""The running ledger: the single writer, the local API and its socket, the scheduler and its jobs."""
