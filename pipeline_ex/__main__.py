"""`python -m pipeline_ex` is the same as the `pipeline-ex` command."""

import sys

from pipeline_ex.cli import main

sys.exit(main())
