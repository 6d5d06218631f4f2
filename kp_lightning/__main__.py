"""``python -m kp_lightning <command>``: the same as the ``kp-lightning`` command."""

import sys

from kp_lightning.commands import main

sys.exit(main())
