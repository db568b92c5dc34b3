"""One way to write a file so that nobody ever reads half of it: :func:`atomic_write`.

A run can be killed at any instant (SIGKILL, OOM, preemption, a laptop lid), and a notebook may
read a file while another process rewrites it. Writing in place can leave a truncated file that
later fails in confusing ways ("bad zip file", "unexpected EOF"). So every file bitkit writes
goes through the same three steps:

1. write a temporary file *in the same folder* (a rename is only atomic within one file system);
2. flush and ``fsync`` it, so its bytes are on disk before its name is (else a power loss after
   the rename can leave an empty file under the final name);
3. ``os.replace`` it over the target: readers see the old file or the new one, never a mix.

The temporary file is removed if anything fails, and its name is unique (``mkstemp``), so two
processes writing the same path cannot clobber each other's temporary file.

Result objects (``evaluate.Report``, ``dedup.DuplicateReport``) share one file shape on top of
it: :func:`save_npz` / :func:`load_npz`, a compressed ``.npz`` of arrays plus a JSON ``info``
entry, readable without pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], Any], *,
                 text: bool = False) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills an open temporary file, then it is renamed.

    ``f`` is opened in binary mode (``text=True``: UTF-8 text). Writers that insist on a file
    *name* (e.g. ``safetensors.torch.save_file``) can use ``f.name``; they must not close or
    replace it. Returns the final path. The parent folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)  # reopened by name, so that f.name is the path (not the descriptor number)
    try:
        with open(tmp, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
            write(f)
        # fsync through a fresh descriptor: a writer given f.name (safetensors) may have
        # replaced the file, and syncing the old descriptor would sync the wrong inode.
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, content: str) -> Path:
    """``Path.write_text``, atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(content), text=True)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
             info: Mapping[str, Any]) -> Path:
    """Arrays plus JSON metadata as one compressed ``.npz``, atomically; loads without pickle.

    ``info`` (JSON-serialisable) is stored as the string entry ``"info"``, so no array may take
    that name. ``path`` is used as given (the caller decides its suffix). Returns the path.
    """
    if "info" in arrays:
        raise ValueError("'info' is reserved for the JSON metadata; rename that array")
    return atomic_write(path, lambda f: np.savez_compressed(
        f, info=np.asarray(json.dumps(info)), **arrays))


def load_npz(path: str | os.PathLike, kind: str,
             missing: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a :func:`save_npz` file: ``(arrays, info)``, with ``allow_pickle=False``.

    ``kind`` names the object in errors: ``ValueError("... is not a bitkit {kind} ...")`` for
    an ``.npz`` without ``info``; ``FileNotFoundError("no {missing} at {path}")`` when there
    is no file (``missing`` defaults to ``kind``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {missing or kind} at {path}")
    with np.load(path, allow_pickle=False) as z:
        if "info" not in z.files:
            raise ValueError(f"{path} is not a bitkit {kind} (no 'info' entry)")
        info = json.loads(str(z["info"]))
        arrays = {name: z[name] for name in z.files if name != "info"}
    return arrays, info
