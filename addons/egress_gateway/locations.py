"""Where the repository's own files are (the package is installed editable from addons/)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO_ROOT / "policies" / "default.yaml"
RECORDINGS = REPO_ROOT / "recordings"
