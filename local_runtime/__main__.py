"""`python -m local_runtime start ...`: see local_runtime.cli."""

import sys

from local_runtime.cli import main

sys.exit(main())
