"""`run_gateway.sh replay FILE... [mitmweb args]`: review recordings in mitmweb, offline."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    """`run_gateway.sh replay FILE... [mitmweb args]`: review recordings in mitmweb, offline.

    mitmweb runs without a proxy server (``-n``), so nothing can be forwarded; its UI listens on
    127.0.0.1:8081 (``--web-port`` to change). Several files (e.g. a session's rotated parts)
    are concatenated, in the order given, into one temporary file.
    """
    files = [a for a in argv if not a.startswith("-") and a.endswith(".mitm")]
    rest = [a for a in argv if a not in files]
    if not files:
        print("usage: run_gateway.sh replay FILE.mitm [FILE.mitm ...] [mitmweb args]",
              file=sys.stderr)
        return 2
    for f in files:
        if not Path(f).is_file():
            print(f"replay: {f} is not a file", file=sys.stderr)
            return 2
    rfile = files[0]
    if len(files) > 1:
        fd, rfile = tempfile.mkstemp(prefix="gateway-replay-", suffix=".mitm")
        with os.fdopen(fd, "wb") as out:
            for f in files:
                with open(f, "rb") as src:
                    shutil.copyfileobj(src, out)
    mitmweb = shutil.which("mitmweb", path=str(Path(sys.executable).parent)) or "mitmweb"
    args = [mitmweb, "-n", "-r", rfile, "--web-host", "127.0.0.1", "--no-web-open-browser", *rest]
    os.execv(mitmweb, args)
    return 0  # not reached
