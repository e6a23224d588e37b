"""`python -m zeroth ...`: the same as the `zeroth` command."""

import sys

from zeroth.cli import main

sys.exit(main())
