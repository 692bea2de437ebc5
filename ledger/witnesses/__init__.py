"""A witness: an outside party's program that follows the ledger's headers and alarms on forks."""
