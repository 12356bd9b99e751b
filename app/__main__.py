"""`python -m app ...` is `qsim ...` (for images and scripts that do not put console scripts on PATH)."""

import sys

from app.cli import main

sys.exit(main())
