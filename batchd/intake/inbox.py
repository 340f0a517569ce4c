"""What in the inbox is a candidate file, what is junk, and which pipeline applies.

Shared by ``batchd run --once`` (one scan) and the watcher (events + rescans).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from batchd.pipeline import PIPELINE_FILE, Pipeline, load_pipeline

# Sync tools, office suites, browsers and NAS boxes leave these behind; never touch them.
IGNORED_NAMES = (
    ".*",
    "~*",
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.swp",
    ".syncthing.*",
    "~syncthing~*",
    ".~lock.*#",
    "~$*",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "*.!sync",
    "*.filepart",
    "README*",
    "*.cancel",  # NAME.cancel stops NAME's job (``intake.cancels``): never an input
)
#: inside a pipeline folder only these are inputs; everything else is the pipeline's own assets
INPUT_SUFFIXES = (".csv", ".jsonl")
IGNORED_DIRS = ("@eaDir", "#recycle", "#snapshot", ".snapshot", "$RECYCLE.BIN", ".Trash*", ".stfolder", ".stversions")

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_ignored(name: str, extra: tuple[str, ...] = ()) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in (*IGNORED_NAMES, *extra))


def is_ignored_dir(name: str) -> bool:
    return name.startswith(".") or any(fnmatch.fnmatchcase(name, pat) for pat in IGNORED_DIRS)


def safe_stem(name: str) -> str:
    """A file name reduced to something that is always a safe folder name in the outbox."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    stem = _SAFE.sub("_", stem).strip("._-")[:100]
    return stem or "input"


@dataclass(frozen=True)
class Candidate:
    path: Path
    #: path relative to the inbox, as shown to people and stored in the journal
    rel: str
    #: pipeline folder name, None for the inbox root
    pipeline: str | None
    #: (st_dev, st_ino) of the pipeline folder when it was found: the claimer refuses another folder
    folder_id: tuple[int, int] | None = None


def scan(inbox: Path, extra_ignore: tuple[str, ...] = ()) -> list[Candidate]:
    """Every non-ignored entry at the root and one level down in pipeline folders.

    Entries are returned whatever their type (symlinks, FIFOs, folders named
    ``x.csv``): the claimer turns the unsupported ones into error records.
    Sorted by modification time, then name, so claim order follows drop order.
    """
    found: list[tuple[float, str, Candidate]] = []
    for entry in _entries(inbox):
        if is_ignored(entry.name, extra_ignore):
            continue
        if entry.is_dir(follow_symlinks=False):
            if is_ignored_dir(entry.name):
                continue
            folder = Path(entry.path)
            if not (folder / PIPELINE_FILE).is_file():
                if "." in entry.name:  # a folder named like a file (x.csv/): tell the user
                    found.append((_mtime(entry), entry.name, Candidate(folder, entry.name, None)))
                continue
            folder_id = _identity(entry)
            for sub in _entries(folder):
                if is_ignored(sub.name, extra_ignore) or not sub.name.lower().endswith(INPUT_SUFFIXES):
                    continue
                rel = f"{entry.name}/{sub.name}"
                found.append((_mtime(sub), rel, Candidate(Path(sub.path), rel, entry.name, folder_id)))
            continue
        found.append((_mtime(entry), entry.name, Candidate(Path(entry.path), entry.name, None)))
    found.sort(key=lambda t: (t[0], t[1]))
    return [c for _, _, c in found]


def candidate_for(inbox: Path, path: Path) -> Candidate | None:
    """Map a watcher event path to a candidate, or None when it is not one."""
    try:
        rel = path.relative_to(inbox)
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) == 1:
        return Candidate(path, parts[0], None)
    if (
        len(parts) == 2
        and not is_ignored_dir(parts[0])
        and parts[1].lower().endswith(INPUT_SUFFIXES)
        and (inbox / parts[0] / PIPELINE_FILE).is_file()
    ):
        try:
            st = (inbox / parts[0]).lstat()
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):  # a symlink to a folder elsewhere is not a pipeline folder
            return None
        return Candidate(path, f"{parts[0]}/{parts[1]}", parts[0], (st.st_dev, st.st_ino))
    return None


def pipeline_for(inbox: Path, name: str | None, default: Pipeline) -> Pipeline:
    """The pipeline for a folder; raises ConfigError when its pipeline.toml is malformed."""
    return default if name is None else load_pipeline(inbox / name)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def _identity(entry: os.DirEntry[str]) -> tuple[int, int] | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def free_outbox_name(stem: str, outbox: Path, reserved: set[str]) -> str:
    """``stem``, or ``stem.2``, ``stem.3``... : the first name no outbox folder has and no job holds."""
    try:
        taken = set(os.listdir(outbox)) | reserved
    except OSError:
        taken = reserved
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}.{n}"
    return name


def refusal(cand: Candidate, st: os.stat_result, max_file_bytes: int) -> tuple[str, str] | None:
    """Why a candidate is not taken (a reason and its code), or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; batchd never follows links (copy the file in instead)", "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file", "not_a_file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (FIFO, socket or device)", "not_a_file"
    if st.st_nlink > 1:
        return ("has more than one hard link; batchd only takes plain files (copy the file in instead)", "hardlink")
    if cand.path.suffix.lower() not in INPUT_SUFFIXES:
        return (
            f"unsupported file type {cand.path.suffix or '(none)'!r}; drop .csv or .jsonl files",
            "unsupported_type",
        )
    if st.st_size > max_file_bytes:
        return (
            f"file is {st.st_size:,} bytes, over limits.max_file_bytes ({max_file_bytes:,})",
            "too_large",
        )
    return None
