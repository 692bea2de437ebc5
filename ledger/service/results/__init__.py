"""What the ledger's API answers, as typed JSON documents: the contract between the ledger
and the CLI, the dashboard, the scheduler and other systems, in process or over the socket.

Why TypedDicts rather than models: a result *is* a JSON document. The CLI prints it with
`--json`, the socket carries it, the dashboard tabulates it, and other systems read the
same shape. A TypedDict types that document where it is made, without a second
representation to convert to and from: mypy checks every key a caller reads, and the
socket's client validates each answer against the method's declared type with pydantic
(`ledger/service/rpc.py`), in strict mode and with unknown keys refused, so the
declaration and what crosses the wire cannot drift apart unnoticed.

Rows the store makes (a quarantine entry, a block) are declared beside the query that
makes them in ledger/store/; results the service makes (an enrolment, a bill issued)
are declared here, one module per area. All are decorated `@document` (ledger/documents.py):
unknown keys refused.
"""
