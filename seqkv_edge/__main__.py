"""``python -m seqkv_edge COMMAND ...`` is the ``seqkv`` command."""
import sys

from .cli import main

sys.exit(main())
