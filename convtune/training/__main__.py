"""``python -m convtune.training train ...`` (same as ``convtune train ...``)."""

import sys

from convtune.training.cli import main

sys.exit(main())
