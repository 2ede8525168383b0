"""``python -m breedline.deploy deploy|destroy ...`` (what ``make deploy`` / ``make destroy`` run)."""

import sys

from breedline.deploy.cli import main

sys.exit(main())
