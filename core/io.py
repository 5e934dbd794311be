"""Atomic file writes: a killed job never leaves a half-written checkpoint or metrics file, only a
temporary file beside it (`.checkpoint.pt.tmp-xxxxxxxx`), which `remove_temp_files` clears."""
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from core.errors import CheckpointError

TEMP_MARK = ".tmp-"
# `.<name>.tmp-` + mkstemp's 8 characters; before the mark was added, `.<name>.` + 8 characters
_TEMP_FILE = re.compile(r"^\..+\.(tmp-)?[a-z0-9_]{8}$")


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_bytes(data, path):
    _atomic(path, lambda f: f.write(data))


def save_torch(obj, path):
    import torch  # here, not at the top: tables and checks write CSV without loading torch
    _atomic(path, lambda f: torch.save(obj, f))


def save_json(obj, path):
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def save_text(text, path):
    _atomic(path, lambda f: f.write(text.encode()))


def save_npy(array, path):
    import numpy as np
    _atomic(path, lambda f: np.save(f, array))


def remove_temp_files(folder):
    """Delete the temporary files that a process killed in the middle of an atomic write left in
    `folder`; call it only while no other process writes there (core/locks.py: run_lock)."""
    removed = [p for p in Path(folder).glob(".*") if p.is_file() and _TEMP_FILE.match(p.name)]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def save_csv(frame, path):
    """A results table (pandas DataFrame), 6 significant digits, written atomically."""
    _atomic(path, lambda f: f.write(frame.to_csv(index=False, float_format="%.6g").encode()))


def load_torch(path, what="checkpoint"):
    """Load a torch file, turning a truncated or foreign file into a one-line error."""
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{what} {path} is unreadable ({type(err).__name__}); "
                           f"delete it to start this stage again") from None


def torch_file_intact(path):
    """Whether a torch.save file is whole: its zip directory, written last, is there, and names the
    pickle (a file cut short has none). Reads the end of the file only."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def file_digest(path):
    """sha256 of a file's bytes (a starting model or budget file a run depends on)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]
