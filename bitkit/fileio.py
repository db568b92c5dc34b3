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

A folder a user names (``out_dir``, ``--out``) may hold their own files, and a mistyped path must
never cost them data. So a writer that fills a folder first records what it is about to write
there (:func:`record_written`: ``.bitkit-written.json``, by writer, written atomically before the
files, so a killed run is still covered), and a fresh run clears only that
(:func:`clear_written`): the recorded files, the temporaries of their killed atomic writes, and
then the recorded sub-folders once empty. Anything else is foreign and is either refused, with
:class:`ForeignFilesError` naming a few of the files and the fix, or left in place when it cannot
be taken for the run's output; the writer decides which. bitkit never removes a folder it was
given.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
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


# --------------------------------------------------------------------------------------------
# What bitkit wrote into a folder, so that reusing the folder removes nothing else
# --------------------------------------------------------------------------------------------

#: The record, one per folder: for each writer, the files (and the sub-folders) it wrote there.
WRITTEN = ".bitkit-written.json"
_WRITTEN_FORMAT = "bitkit-written-v1"
_SHOWN = 5  # foreign files named in an error


class ForeignFilesError(FileExistsError):
    """A folder bitkit was asked to (re)fill holds files bitkit did not write; nothing was removed.

    ``folder`` is the folder, ``files`` the foreign paths (relative, ``/``-separated; an empty
    folder of the user's ends in ``/``).
    """

    def __init__(self, folder: Path, files: list[str], message: str) -> None:
        super().__init__(message)
        self.folder, self.files = folder, files


def _valid_rel(p: Any) -> bool:
    if not isinstance(p, str) or not p or "\\" in p:
        return False
    parts = PurePosixPath(p).parts
    return (not PurePosixPath(p).is_absolute() and all(x not in ("", ".", "..") for x in parts)
            and p != WRITTEN)


def _read_record(folder: Path) -> dict[str, dict[str, list[str]]] | None:
    """The folder's record by writer; {} when there is none; None when it is unreadable (then
    it vouches for nothing and is itself a foreign file)."""
    path = folder / WRITTEN
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != _WRITTEN_FORMAT:
        return None
    writers = doc.get("writers")
    if not isinstance(writers, dict):
        return None
    out = {}
    for name, entry in writers.items():
        if not isinstance(entry, dict):
            return None
        files, dirs = entry.get("files", []), entry.get("dirs", [])
        if not (isinstance(files, list) and isinstance(dirs, list)
                and all(map(_valid_rel, files)) and all(map(_valid_rel, dirs))):
            return None
        out[str(name)] = {"files": list(files), "dirs": list(dirs)}
    return out


def _write_record(folder: Path, record: Mapping[str, Mapping[str, list[str]]]) -> None:
    if not record:
        (folder / WRITTEN).unlink(missing_ok=True)
        return
    doc = {"format": _WRITTEN_FORMAT,
           "about": "files bitkit wrote in this folder, by writer; when bitkit reuses the folder "
                    "it removes only these (docs: bitkit.fileio.clear_written)",
           "writers": {k: {"files": sorted(set(v["files"])), "dirs": sorted(set(v["dirs"]))}
                       for k, v in sorted(record.items())}}
    atomic_write_text(folder / WRITTEN, json.dumps(doc, indent=1) + "\n")


def record_written(folder: str | os.PathLike, writer: str, files: Iterable[str]) -> Path:
    """Add ``files`` to what ``writer`` wrote in ``folder``, atomically; returns the record.

    Call it *before* writing them, so that a run killed half-way still leaves a record of its
    files. Paths are relative to ``folder``, ``/``-separated. Every parent folder of a file that
    does not exist yet is recorded too: bitkit is about to create it, and removes it again once
    empty. ``folder`` is created when missing (it is never recorded, nor ever removed).
    An unreadable record is refused (:class:`ForeignFilesError`), never replaced.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = _read_record(folder)
    if record is None:
        raise ForeignFilesError(folder, [WRITTEN], (
            f"{folder / WRITTEN} is not a record bitkit can read; bitkit will not replace it. "
            "Move or remove it yourself, or choose another folder."))
    entry = record.setdefault(writer, {"files": [], "dirs": []})
    new_dirs = []
    for rel in files:
        if not _valid_rel(rel):
            raise ValueError(f"not a relative path inside the folder: {rel!r}")
        entry["files"].append(rel)
        new_dirs += [str(p) for p in PurePosixPath(rel).parents if str(p) != "."]
    entry["dirs"] += [d for d in new_dirs if d in entry["dirs"] or not (folder / d).exists()]
    _write_record(folder, record)
    return folder / WRITTEN


def _owned(folder: Path, writer: str,
           legacy: Callable[[Path], Iterable[str]] | None) -> tuple[set[str], set[str], bool]:
    """(files, dirs) ``writer`` owns in ``folder``, and whether the record file can be trusted."""
    record = _read_record(folder)
    entry = (record or {}).get(writer)
    if entry is not None:
        return set(entry["files"]), set(entry["dirs"]), record is not None
    files = {p for p in (legacy(folder) if legacy else ()) if _valid_rel(p)}
    dirs = {str(d) for p in files for d in PurePosixPath(p).parents if str(d) != "."}
    return files, dirs, record is not None


def _temporary_of(rel: str, files: set[str]) -> bool:
    """An :func:`atomic_write` temporary left by a killed write of one of ``files``."""
    p = PurePosixPath(rel)
    if not (p.name.startswith(".") and p.name.endswith(".tmp")):
        return False
    target = p.name[1:-4].rpartition(".")[0]  # .NAME.<random>.tmp -> NAME
    return bool(target) and str(p.with_name(target)) in files


def _foreign(folder: Path, files: set[str], dirs: set[str], record_ok: bool) -> list[str]:
    """Every entry under ``folder`` that is not ``files``' or ``dirs``': files, links, and
    empty folders (``name/``). Never follows a link; a link is never bitkit's."""
    foreign = []
    for root, subdirs, names in os.walk(folder, followlinks=False):
        base = Path(root)
        rel_root = base.relative_to(folder).as_posix()
        prefix = "" if rel_root == "." else rel_root + "/"
        for name in list(subdirs):
            if (base / name).is_symlink():  # listed with the folders by os.walk; not one of ours
                subdirs.remove(name)
                names.append(name)
        for name in names:
            rel = prefix + name
            if rel == WRITTEN and record_ok:
                continue
            regular = stat.S_ISREG(os.lstat(base / name).st_mode)
            if not (regular and (rel in files or _temporary_of(rel, files))):
                foreign.append(rel)
        if prefix and not subdirs and not names and rel_root not in dirs:
            foreign.append(prefix)
    return sorted(foreign)


def _collides(path: str, outputs: Iterable[str]) -> bool:
    p = path.rstrip("/")
    return any(p == o or p.startswith(o + "/") or o.startswith(p + "/") for o in outputs)


def _listed(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def foreign_files(folder: str | os.PathLike, writer: str, *,
                  legacy: Callable[[Path], Iterable[str]] | None = None) -> list[str]:
    """What in ``folder`` ``writer`` did not write (see :func:`clear_written`); [] if no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return _foreign(folder, *_owned(folder, writer, legacy))


def clear_written(folder: str | os.PathLike, writer: str, *, what: str,
                  outputs: Iterable[str] | None = None,
                  legacy: Callable[[Path], Iterable[str]] | None = None,
                  remove: bool = True) -> list[str]:
    """Empty ``folder`` of what ``writer`` wrote there for a fresh run; never touch anything else.

    Removes the files ``writer`` recorded (:func:`record_written`) and the temporaries of its
    killed atomic writes, then its recorded sub-folders once empty, and drops its record. Files
    of other writers, links and anything not recorded are *foreign*. The policy is the caller's:

    - ``outputs=None``: the folder must hold nothing foreign (a dataset folder, where a stray
      file would pass for part of the dataset): else :class:`ForeignFilesError`;
    - ``outputs`` given (the paths the fresh run writes): foreign files are left in place, and
      refused only where they are at (or in, or above) one of those paths, where they would be
      overwritten or taken for this run's output.

    A refusal removes nothing; its message names the folder and a few of the foreign files and
    says the fix. ``legacy(folder)`` lists the files a bitkit from before these records wrote
    (recognised by their content); it is asked only when the record has no entry for
    ``writer``. ``what`` ("an OOC dataset") completes the message. ``remove=False`` only checks.
    Returns the removed (or, with ``remove=False``, removable) files.
    """
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder; choose another folder for "
                              f"{what}")
    files, dirs, record_ok = _owned(folder, writer, legacy)
    foreign = _foreign(folder, files, dirs, record_ok)
    fix = "Choose another folder, or move or remove those files yourself."
    if outputs is None and foreign:
        raise ForeignFilesError(folder, foreign, (
            f"{folder} holds {len(foreign)} file(s) bitkit did not write there: "
            f"{_listed(foreign)}. bitkit removes only the files it recorded writing "
            f"({WRITTEN}) and does not write {what} next to anything else. {fix}"))
    if outputs is not None:
        outputs = [*(o.rstrip("/") for o in outputs), WRITTEN]  # an unreadable record: refused
        clash = [p for p in foreign if _collides(p, outputs)]
        if clash:
            raise ForeignFilesError(folder, clash, (
                f"{folder} holds {_listed(clash)}, which bitkit has no record of writing there "
                f"(they may be yours, or from an older bitkit or a run that keeps no record); "
                f"{what} writes files of those names and would overwrite them or take them for "
                f"its own. {fix}"))
    mine = sorted(rel for rel in _walk_files(folder)
                  if rel in files or _temporary_of(rel, files))
    mine = [rel for rel in mine if stat.S_ISREG(os.lstat(folder / rel).st_mode)]
    if not remove:
        return mine
    for rel in mine:
        (folder / rel).unlink()
    for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        d = folder / rel
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()
    record = _read_record(folder)
    if record is not None and writer in record:
        del record[writer]
        _write_record(folder, record)
    return mine


def _walk_files(folder: Path) -> Iterator[str]:
    for root, _, names in os.walk(folder, followlinks=False):
        rel_root = Path(root).relative_to(folder).as_posix()
        for name in names:
            yield name if rel_root == "." else f"{rel_root}/{name}"
