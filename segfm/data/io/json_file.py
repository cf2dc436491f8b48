"""Reading the small JSON files of a dataset (dataset.json, labels.json, split files)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from segfm.errors import DataError


def read_json(path: str | os.PathLike[str], fix: str, kind: type = dict) -> Any:
    """Parse a JSON file, or report why not as one line.

    Args:
        path: The file.
        fix: What the user should do if it cannot be used (ends the error message).
        kind: Type the top-level value must have.

    Returns:
        The parsed content.

    Raises:
        DataError: If the file is missing, is not JSON, or its content is not a ``kind``.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = f"cannot read {path} ({reason}); {fix}"
        raise DataError(msg) from e
    if not isinstance(content, kind):
        msg = f"{path} holds a JSON {type(content).__name__}, not a {kind.__name__}; {fix}"
        raise DataError(msg)
    return content
