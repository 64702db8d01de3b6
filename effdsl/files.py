"""Writing outputs safely: every file effdsl writes appears whole or not at all.

`atomic_write(path)` yields a temporary path in the target's directory; when the block finishes
without an exception the temporary file is renamed over the target (an atomic step on POSIX),
otherwise it is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from effdsl.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it when the block succeeds."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{target}: directory {directory} does not exist")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory")
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=directory
        )
    except OSError as error:
        raise OutputError(f"{target}: cannot write: {error.strerror}") from None
    os.close(handle)
    temp = Path(temporary)
    try:
        yield temp
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        os.chmod(temp, mode)
        os.replace(temp, target)
    except OSError as error:
        raise OutputError(f"{target}: cannot write: {error.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` atomically."""
    with atomic_path(path) as temp:
        if isinstance(data, str):
            temp.write_text(data, encoding="utf-8")
        else:
            temp.write_bytes(data)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file (the output would overwrite the input)."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
