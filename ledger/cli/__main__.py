"""`python -m ledger.cli`: the same as the `cityledger` command."""

import sys

from ledger.cli.commands import main

sys.exit(main())
