"""Safe files: safetensors and JSON only, written atomically, read with clear errors.

A checkpoint or an adapter is a small folder of files. Writing it in place
would leave a half-written mix if the process died midway, so a save follows
this protocol (the folder is "ckpt" here):

1. Write every file into a fresh sibling folder `.ckpt.tmp.<pid>.<random>`
   and flush it to disk. Nothing a reader looks at has changed yet.
2. Swap it in:
   - no "ckpt" yet: one rename, `.ckpt.tmp...` -> `ckpt`;
   - on Linux: one *exchange* (renameat2 with RENAME_EXCHANGE) swaps the two
     folders in a single step, so "ckpt" is always there, old or new;
   - elsewhere (or on a file system without exchange): two renames,
     `ckpt` -> `.ckpt.old.<pid>.<random>`, then `.ckpt.tmp...` -> `ckpt`.
3. Delete the folder that now holds the old version.

A process killed at any moment leaves "ckpt" complete (old or new), except in
the two-rename case between its renames, where "ckpt" is missing but
`.ckpt.old...` holds the complete old version. The next save or load of
"ckpt" finds the leftovers of writers that are no longer running (the process
id is in the name; one with this process's own id counts only while this
process is writing it): it renames a `.ckpt.old...` back when "ckpt" is
missing, and deletes everything else, so temporary folders never pile up.
A save to the working directory (".") steps into the new folder afterwards.

Saving to a symbolic link writes through it: the folder the link points to
is replaced, and the link stays a link. Nothing is pickled: safetensors holds
only raw arrays.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import numpy as np

TMP, OLD = "tmp", "old"   # the two kinds of sibling a save makes: ".<name>.tmp.<pid>.<token>"


# ----------------------------------------------------------------------------
# Leftovers of interrupted saves


# The temporary siblings this process is writing right now. A leftover named with our own
# process id but not in here was left by an earlier process that had the same id (in a
# container the id is often the same at every start): it is dead, and must be tidied.
_IN_USE: set[Path] = set()


def _sibling(target: Path, kind: str) -> Path:
    """A fresh temporary name beside `target`, marked in use until _done(path)."""
    path = target.parent / f".{target.name}.{kind}.{os.getpid()}.{secrets.token_hex(4)}"
    _IN_USE.add(path)
    return path


def _done(path: Path) -> None:
    _IN_USE.discard(path)


def _writer_is_running(pid: int, entry: Path) -> bool:
    if pid == os.getpid():
        return entry in _IN_USE
    try:
        os.kill(pid, 0)               # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True                   # someone else's process: leave its files alone
    return True


def _leftovers(target: Path) -> list[tuple[str, Path]]:
    """(kind, path) of the temporary siblings of `target` left by writers that have died."""
    found = []
    if not target.parent.is_dir():
        return found
    for kind in (TMP, OLD):
        prefix = f".{target.name}.{kind}."
        for entry in target.parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            pid = entry.name[len(prefix):].split(".")[0]
            if pid.isdigit() and not _writer_is_running(int(pid), entry):
                found.append((kind, entry))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(target) -> Path:
    """Tidy up after saves of `target` that were killed midway; return the real path.

    If `target` is missing and a killed save had moved the old version aside,
    it is put back; every other leftover is deleted. Loads and saves call this.
    """
    target = _resolve(Path(target))
    for kind, path in _leftovers(target):
        if kind == OLD and not target.exists():
            os.replace(path, target)          # the complete previous version comes back
        else:
            _remove(path)
    return target


def _resolve(path: Path) -> Path:
    """The absolute path, a symbolic link followed to what it points to (a save writes through it).

    Absolute, so that "." or "a/.." name a real folder with a real parent.
    """
    return Path(os.path.realpath(path)) if path.is_symlink() else Path(os.path.abspath(path))


# ----------------------------------------------------------------------------
# Writing


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE).

    Raises OSError with errno ENOSYS or EINVAL where that is not available.
    """
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "atomic exchange is a Linux feature")
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "this C library has no renameat2")
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


_NO_EXCHANGE = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def _swap_in(staging: Path, target: Path) -> None:
    """Put the complete folder `staging` at `target`; afterwards `staging` no longer exists."""
    if not target.exists():
        os.replace(staging, target)
        return
    try:
        _exchange(staging, target)              # one step: target is old, then new
        _remove(staging)                        # staging now holds the old version
        return
    except OSError as err:
        if err.errno not in _NO_EXCHANGE:
            raise
    old = _sibling(target, OLD)
    try:
        os.replace(target, old)                 # from here until the next line, target is
        try:                                    # missing: recover() puts `old` back
            os.replace(staging, target)
        except BaseException:
            os.replace(old, target)
            raise
        _remove(old)
    finally:
        _done(old)


def check_output_dir(directory) -> Path:
    """Refuse, before any work, a folder that cannot be written: return its real path."""
    directory = _resolve(Path(directory))
    if directory.is_symlink():          # realpath stopped at a link: the chain loops back on itself
        raise OSError(errno.ELOOP, f"{directory} is a symbolic link that leads back to itself; "
                      "point it at a real folder or choose another output path")
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is a file, not a folder; "
                                 "choose another output path or remove the file")
    parent = directory.parent                        # the folder the final rename happens in
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot create {directory}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write {directory}: no write permission in {parent}")
    return directory


def _working_directory() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:      # the process already sits in a deleted folder
        return None


def _swap_in_keeping_cwd(staging: Path, target: Path) -> None:
    """_swap_in, and if that replaced the working directory (a save to ".") or a folder
    holding it, step into the new version: the process would otherwise sit in a deleted
    folder where every relative path fails."""
    cwd = _working_directory()
    _swap_in(staging, target)
    if cwd is not None and _working_directory() is None:
        os.chdir(cwd)


def write_dir_atomically(directory, files: dict[str, bytes]) -> Path:
    """Write `files` (name -> bytes) into `directory` together: all of them land or none do.

    Other files already in the directory are kept (a checkpoint folder may hold
    several adapters' sub-folders). See the module docstring for the protocol.
    Returns the real path written (a symbolic link is followed).
    """
    directory = check_output_dir(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    staging = _sibling(directory, TMP)
    staging.mkdir()                                  # with the usual permissions (umask)
    try:
        if directory.exists():                       # keep what else is there
            for item in directory.iterdir():
                if item.name not in files:
                    if item.is_dir() and not item.is_symlink():
                        shutil.copytree(item, staging / item.name, symlinks=True)
                    else:
                        shutil.copy2(item, staging / item.name, follow_symlinks=False)
        for name, data in files.items():
            with open(staging / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(staging)
        _swap_in_keeping_cwd(staging, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        _remove(staging)
        raise
    finally:
        _done(staging)
    return directory


def replace_dir(src, target) -> Path:
    """Put the complete folder `src` at `target` in one step; the previous `target` is deleted.

    For a run that builds its outputs in a folder of its own (e.g. OUT.partial)
    and publishes them only when all are there. Returns the real target path.
    """
    target = check_output_dir(target)
    recover(target)
    staging = _sibling(target, TMP)         # if we die now, the next save or load tidies it up
    os.replace(src, staging)
    try:
        _swap_in_keeping_cwd(staging, target)
    except BaseException:
        os.replace(staging, src)
        raise
    finally:
        _done(staging)
    _fsync_dir(target.parent)
    return target


def write_file_atomically(path, data: bytes | str, mode: int | None = None) -> Path:
    """Replace one file in a single rename (text is written as UTF-8).

    A reader sees the old file or the new one, never a half-written one. The
    file gets `mode` if given, else keeps its permissions, or gets the usual
    ones (umask) when new; a symbolic link is written through. Returns the
    real path written.
    """
    path = _resolve(Path(path))
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    if mode is None and path.exists():
        mode = path.stat().st_mode & 0o7777
    elif mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    tmp = _sibling(path, TMP)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _done(tmp)
    return path


# ----------------------------------------------------------------------------
# Formats


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise NumPy arrays to the safetensors format (contiguous copies, no pickle)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)


def _find(path: Path, what: str) -> Path:
    if not path.is_file():
        recover(path.parent)                 # a save killed midway may have left it aside
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {what} there")
    return path


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Load every array of a .safetensors file, or explain what is wrong with the file."""
    from safetensors.numpy import load

    path = _find(Path(path), "a .safetensors file")
    try:
        return load(path.read_bytes())
    except Exception as err:   # safetensors raises its own error type for bad headers/sizes
        _refuse_bfloat16(path)
        raise ValueError(f"{path} is not a valid safetensors file ({err}); it may be truncated "
                         "or corrupt: write it again") from None


def _refuse_bfloat16(path: Path) -> None:
    """A valid file of bfloat16 arrays fails to load only because NumPy has no such type:
    say so, rather than call the file corrupt."""
    try:
        dtypes = {dtype for _, dtype in safetensors_shapes(path).values()}
    except ValueError:
        return                                          # the header itself is broken
    if "BF16" in dtypes:
        raise ValueError(f"{path} stores bfloat16 arrays, which NumPy (and so minilora) cannot hold; "
                         "convert them to float32 first, e.g. in PyTorch: save_file({k: v.float() for "
                         "k, v in load_file(path).items()}, new_path) with safetensors.torch")


def safetensors_shapes(path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) from a .safetensors header, without reading the arrays."""
    path = _find(Path(path), "a .safetensors file")
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < size <= min(100_000_000, path.stat().st_size - 8):
            raise ValueError(f"{path} is not a valid safetensors file (bad header length); it may be "
                             "truncated or corrupt: write it again")
        try:
            header = json.loads(f.read(size))
            return {k: (tuple(int(n) for n in v["shape"]), str(v["dtype"]))
                    for k, v in header.items() if k != "__metadata__"}
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"{path} is not a valid safetensors file (header: {err}); it may be "
                             "truncated or corrupt: write it again") from None


def _plain(value):
    """NumPy scalars (np.float32(0.5), np.int64(3)) as the Python numbers JSON knows."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r:.40} cannot be written as JSON")


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n").encode()


def read_json(path) -> dict:
    path = _find(Path(path), "a JSON file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:   # Recursion: absurd nesting
        raise ValueError(f"{path} is not valid JSON ({err}); it may be truncated or corrupt") from None
