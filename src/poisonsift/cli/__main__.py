"""``python -m poisonsift.cli``: the ``poisonsift`` command."""

import sys

from poisonsift.cli import main

sys.exit(main())
