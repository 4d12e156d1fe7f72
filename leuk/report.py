"""``python -m leuk.report``: the old command, kept; the entry point is ``leuk.cli.report``."""

import sys

from leuk.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
