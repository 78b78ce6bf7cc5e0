"""`python -m egress_gateway.cli CMD ...` (what run_gateway.sh calls)."""

import sys

from egress_gateway.cli import main

sys.exit(main())
