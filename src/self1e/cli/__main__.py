"""`python -m self1e.cli` = the `self1e` command (e.g. under `torchrun --no-python` alternatives)."""
import sys

from self1e.cli import main

sys.exit(main())
