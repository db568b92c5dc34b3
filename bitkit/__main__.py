"""``python -m bitkit``: the ``bitkit`` command (and torchrun's ``-m bitkit train ...``)."""

import sys

from bitkit.cli import main

sys.exit(main())
