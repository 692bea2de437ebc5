"""What operators and the system do to the ledger besides sealing readings and keeping the
registry, one module per concern: billing, parking, people (dashboard logins and
disputes) and district chains.

Each operation is a plain function over the one `LedgerWriter`: it checks the request,
then seals the entry standing for it together with its table rows (`LedgerWriter.seal`),
so the ledger says what was done, by whom, and the tables can be rebuilt from it.
"""
