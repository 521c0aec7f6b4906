"""A benchmark's scratch folder, and the rule that a benchmark reports but never fails."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_folder(
    prefix: str, keep: bool, on_error: Callable[[str], None] = print
) -> Iterator[Path]:
    """A new folder, removed afterwards unless `keep`; an exception inside is reported
    through `on_error` instead of raised (CI times nothing, so nothing may fail it)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    except Exception as exc:
        on_error(f"benchmark aborted: {exc.__class__.__name__}: {exc}")
    finally:
        if keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
