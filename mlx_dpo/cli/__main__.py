"""`python -m mlx_dpo.cli ...`: how the dashboard starts the trainer and the export."""

import sys

from mlx_dpo.cli import main

sys.exit(main())
