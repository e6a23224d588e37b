"""`python -m zeroth.cli ...`: the same as the `zeroth` command."""

from zeroth.cli import main

raise SystemExit(main())
