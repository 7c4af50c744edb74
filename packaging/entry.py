"""Entry point of the packaged app: the same ``lowbit`` command as a pip install."""

import sys

from lowbit.core.cli import main

if __name__ == "__main__":
    sys.exit(main())
