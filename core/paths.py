"""Where the project's own files are: paths in paper tables (e.g. a budget CSV) are relative to
the project root, whatever folder a job runs in."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPERS_DIR = ROOT / "config" / "papers"
