"""`python -m twofiles ...` (also what `torchrun -m twofiles pretrain ...` runs)."""

import sys

from twofiles.cli import main

sys.exit(main())
