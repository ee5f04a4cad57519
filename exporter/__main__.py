"""`python -m exporter` is the same as the `asyncjob-exporter` command."""

import sys

from exporter.cli import main

sys.exit(main())
