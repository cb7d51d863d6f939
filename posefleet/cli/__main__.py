"""``python -m posefleet.cli``: the ``posefleet`` command."""

import sys

from posefleet.cli import main

sys.exit(main())
