"""``python -m fer_lightning.cli``: the same as the ``fer-lightning`` command.

Lightning's DDP launcher starts the other ranks by re-running the command line, so multi-process runs
need an entry point that works as ``python -m``.
"""

import sys

from fer_lightning.cli import main

sys.exit(main())
