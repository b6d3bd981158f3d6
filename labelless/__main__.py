"""``python -m labelless ...`` = the ``labelless`` command (e.g. under torchrun:
``torchrun --nproc_per_node 4 -m labelless train pixelclip --config FILE``)."""

import sys

from labelless.cli import main

sys.exit(main())
