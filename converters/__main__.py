"""``python -m converters``: the ``model-convert`` command line."""

import sys

from .cli import main

sys.exit(main())
