"""``python -m metatune``: the same CLI as the ``metatune`` command."""

import sys

from metatune.cli import main

sys.exit(main())
