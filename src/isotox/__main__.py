"""``python -m isotox`` runs the command-line interface."""

import sys

from isotox.cli import main

sys.exit(main())
