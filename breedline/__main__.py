"""``python -m breedline``: the operator CLI (see :mod:`breedline.cli`)."""

import sys

from breedline.cli import main

sys.exit(main())
