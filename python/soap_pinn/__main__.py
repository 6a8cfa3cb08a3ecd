"""`python -m soap_pinn ...` is `soap-pinn ...`."""

import sys

from .cli import main

sys.exit(main())
