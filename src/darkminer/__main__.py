"""`python -m darkminer ...`, which is also what `accelerate launch -m darkminer ...` runs in each process."""

import sys

from darkminer.cli import main

sys.exit(main())
