"""Bills from the ledger: tariffs, the pure billing rules, bills, and the daily summaries they read."""
