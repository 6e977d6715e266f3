"""``python -m homer_llm.bench``: the benchmark without the main CLI."""

import sys

from .cli import main

sys.exit(main())
