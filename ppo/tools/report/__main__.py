"""`python -m ppo.tools.report SWEEP_DIR`: ppo-report."""

import sys

from ppo.tools.report.cli import main

sys.exit(main())
