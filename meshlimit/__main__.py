"""``python -m meshlimit``: the same as the ``meshlimit`` command."""

import sys

from meshlimit.cli import main

sys.exit(main())
