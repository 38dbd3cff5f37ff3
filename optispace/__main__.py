"""``python -m optispace`` (and ``torchrun -m optispace``): the ``optispace`` command."""

import sys

from optispace.cli import main

if __name__ == "__main__":
    sys.exit(main())
