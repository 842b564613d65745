"""`python -m aibcli` is the `aib` console script."""

import sys

from aibcli.main import main

sys.exit(main())
