"""``python -m homer_agent``: the document agent's command line (``homer_agent.cli``)."""

import sys

from .cli import main

sys.exit(main())
