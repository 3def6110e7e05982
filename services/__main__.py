"""``python -m services`` runs the ``hvdm`` command line."""

import sys

from .cli.main import main

sys.exit(main())
