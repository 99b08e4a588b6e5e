"""``python -m builder.cli``: the same as the ``fluorobench-c`` script."""

import sys

from builder.cli import main

sys.exit(main())
