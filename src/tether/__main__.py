"""``python -m tether``: the same as the ``tether`` command."""

import sys

from ._console import main

sys.exit(main())
