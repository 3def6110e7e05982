"""``python -m services`` runs the ``hvdm`` command line."""

import sys

from services.cli.main import main

sys.exit(main())
