"""Where the project's own files are: paths in paper tables (e.g. a budget CSV) are relative to
the project root, whatever folder a job runs in; and where the harness keeps what it can make again."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPERS_DIR = ROOT / "config" / "papers"


def cache_dir():
    """What the harness keeps between runs and may be deleted at any time (decoded data sets, expanded
    tables): $HARNESS_CACHE, by default $XDG_CACHE_HOME/compression-harness or ~/.cache/compression-harness."""
    return Path(os.environ.get("HARNESS_CACHE") or
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compression-harness")
