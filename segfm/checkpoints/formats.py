"""Official checkpoint formats by name, and export of Lightning checkpoints into them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from segfm.errors import CheckpointError

#: the network's keys in every method's state dict (each method names its network ``model``)
PREFIX = "model."


@dataclass(frozen=True)
class OfficialFormat:
    """How one model family's released checkpoint is written.

    Args:
        name: Format name used by ``segfm export --format``: the name of the converter module
            ``segfm/checkpoints/<name>.py``.
        module: Module holding ``save_official(state_dict, path)``.
        prefix: Prefix of the network's keys in the Lightning module's state dict.
    """

    name: str
    module: str
    prefix: str = PREFIX

    def saver(self) -> Callable[[Any, str | Path], Any]:
        """The format's ``save_official`` function."""
        return importlib.import_module(self.module).save_official


def _discover() -> dict[str, OfficialFormat]:
    """Every module of this package that has ``load_official`` and ``save_official``.

    Read as text, not imported: a new family's converter file is a format with no registry to
    edit, and listing the formats costs no import.
    """
    found = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        text = path.read_text()
        if "\ndef load_official(" in text and "\ndef save_official(" in text:
            found[path.stem] = OfficialFormat(path.stem, f"{__package__}.{path.stem}")
    return found


#: format name -> format, one per converter module
FORMATS: dict[str, OfficialFormat] = _discover()


def get_format(name: str) -> OfficialFormat:
    """Look up a format by name, with an error listing the known ones."""
    if name not in FORMATS:
        msg = f"unknown checkpoint format '{name}'; choose one of {sorted(FORMATS)}"
        raise CheckpointError(msg)
    return FORMATS[name]


def network_state_dict(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The network's own entries of a Lightning module state dict, prefix removed."""
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        msg = (
            f"no weights under '{prefix}' in the state dict; is this checkpoint of another method?"
        )
        raise CheckpointError(msg)
    return out


def export_state_dict(state_dict: dict[str, Tensor], format_name: str, output: str | Path) -> Path:
    """Write the network inside a Lightning state dict in an official format.

    Args:
        state_dict: The Lightning module's state dict.
        format_name: A key of :data:`FORMATS`.
        output: File to write (atomically).

    Returns:
        The path written.
    """
    fmt = get_format(format_name)
    fmt.saver()(network_state_dict(state_dict, fmt.prefix), output)
    return Path(output)
