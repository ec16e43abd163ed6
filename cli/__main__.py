"""``python -m cli``: the same as the ``heroes`` command."""

import sys

from cli.main import main

sys.exit(main())
