"""``python -m effnet_runtime.serve``: the same as the ``effnet-serve`` command."""

import sys

from .cli import main

sys.exit(main())
