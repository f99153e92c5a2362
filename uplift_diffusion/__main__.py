"""``python -m uplift_diffusion ...``: the same as the ``uplift-diffusion`` command."""

import sys

from uplift_diffusion.cli import main

sys.exit(main())
