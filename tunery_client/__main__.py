"""`python -m tunery_client ...`: the `tunery` command without its console script."""

import sys

from tunery_client.cli import main

sys.exit(main())
