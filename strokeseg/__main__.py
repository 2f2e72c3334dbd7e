"""``python -m strokeseg ...``: the same as the ``strokeseg`` command."""
import sys

from strokeseg.cli import main

sys.exit(main())
