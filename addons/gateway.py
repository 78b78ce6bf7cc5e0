"""The script mitmproxy loads: `mitmdump -s addons/gateway.py` (see run_gateway.sh).

Kept thin on purpose: the code is the installed `egress_gateway` package beside this file.
"""

from egress_gateway.bundle import make_addons

addons = make_addons()
