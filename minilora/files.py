"""Safe files: safetensors and JSON only, written atomically, read with clear errors.

A checkpoint or an adapter is a small directory of files. Writing it in place
would leave a half-written mix if the process died midway, so everything is
written into a fresh temporary directory beside the target and then swapped in
with renames. Nothing is pickled: safetensors holds only raw arrays.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def write_dir_atomically(directory, files: dict[str, bytes]) -> Path:
    """Write `files` (name -> bytes) into `directory` together: all of them land or none do.

    Other files already in the directory are kept (a checkpoint folder may hold
    several adapters' sub-folders).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)               # mkdtemp makes it private (0700); use the usual mode
    try:
        if directory.exists():                      # keep what else is there
            for item in directory.iterdir():
                if item.name not in files:
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
        for name, data in files.items():
            with open(staging / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            old.rmdir()
            os.replace(directory, old)              # the two renames are the only moment of change
            try:
                os.replace(staging, directory)
            except BaseException:
                os.replace(old, directory)          # put the previous version back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise NumPy arrays to the safetensors format (contiguous copies, no pickle)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Load every array of a .safetensors file, or explain what is wrong with the file."""
    from safetensors.numpy import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a .safetensors file there")
    try:
        return load(path.read_bytes())
    except Exception as err:   # safetensors raises its own error type for bad headers/sizes
        raise ValueError(f"{path} is not a valid safetensors file ({err}); it may be truncated "
                         "or corrupt: write it again") from None


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a JSON file there")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it may be truncated or corrupt") from None
