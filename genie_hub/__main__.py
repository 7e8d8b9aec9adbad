"""`python -m genie_hub ...` (also what `accelerate launch -m genie_hub ...` runs)."""

import sys

from .cli import main

sys.exit(main())
