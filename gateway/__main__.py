"""`python -m gateway`: same as the `viewbait-gateway` console script."""

import sys

from gateway.cli import main

sys.exit(main())
