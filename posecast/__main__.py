"""``python -m posecast ...`` is the ``posecast`` command."""

import sys

from posecast.cli import main

sys.exit(main())
