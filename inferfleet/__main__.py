"""`python -m inferfleet` is the `inferfleet` command."""

import sys

from inferfleet.cli import main

sys.exit(main())
