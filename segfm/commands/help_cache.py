"""The help of the Trainer subcommands, kept after its first rendering.

``segfm fit --help`` is LightningCLI's parser, and importing Lightning takes seconds of CPU. The
text changes only with segfm's source, the installed Lightning, jsonargparse and torch, the
Python version and the terminal width, so it is kept in the user's cache folder
(``$SEGFM_CACHE``, else ``$XDG_CACHE_HOME/segfm``, else ``~/.cache/segfm``) under a key of all of
these, and printed from there the next time without importing torch. An unwritable cache folder
only means the help is rendered every time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

#: installed packages whose version changes the Trainer subcommands' help
PACKAGES = ("lightning", "jsonargparse", "torch")


def cache_folder() -> Path:
    """Where the rendered help texts are kept."""
    if os.environ.get("SEGFM_CACHE"):
        return Path(os.environ["SEGFM_CACHE"]) / "help"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segfm" / "help"


def _key(name: str) -> str:
    """A digest of everything the help of subcommand ``name`` depends on."""
    digest = hashlib.sha256()
    source = Path(__file__).resolve().parents[1]  # the segfm package
    for path in sorted(source.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(source)}:{stat.st_mtime_ns}:{stat.st_size};".encode())
    for package in PACKAGES:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{package}={version};".encode())
    width = shutil.get_terminal_size().columns
    digest.update(f"{name};{width};{sys.version};{os.environ.get('COLUMNS', '')}".encode())
    return digest.hexdigest()[:32]


def cached_help(name: str) -> str | None:
    """The kept help text of subcommand ``name``, or None if it has not been kept yet."""
    path = cache_folder() / f"{name}-{_key(name)}.txt"
    try:
        return path.read_text()
    except OSError:
        return None


def keep_help(name: str, text: str) -> None:
    """Keep the help text of subcommand ``name``, replacing older texts of it.

    Skipped silently where the folder is not writable.
    """
    folder = cache_folder()
    path = folder / f"{name}-{_key(name)}.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{name}-*.txt"):
            old.unlink()
        partial = path.with_suffix(".part")
        partial.write_text(text)
        partial.replace(path)
    except OSError:
        return
