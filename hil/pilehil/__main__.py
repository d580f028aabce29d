"""``python -m pilehil``: see :mod:`pilehil.cli`."""

import sys

from .cli import main

sys.exit(main())
