"""``python -m llmcore`` (and ``torchrun -m llmcore``) runs the console script."""

import sys

from .cli import main

sys.exit(main())
