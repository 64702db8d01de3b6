"""Reading inputs and writing outputs safely: the one place effdsl touches the file system.

Reading (`read_input`, `read_stdin`, `open_input`): only regular files (or stdin) are read,
never more than a limit plus one byte, so `/dev/zero`, a FIFO with no writer, a directory or a
huge sparse file is refused at once with an `EffError` instead of hanging or filling memory.

Writing (`atomic_path`, `atomic_write`): the target is written to a temporary file beside it
(named `.NAME.effdsl-PID-XXXX.tmp`) and renamed over it when the block succeeds, so a file
appears whole or not at all. Every write passes the same checks: never over a file this command
reads (a spec, a checkpoint; compared by device and inode, so symlinks and hard links count),
never over a read-only file, through a symlink to the real file, with the umask honoured for a
new file and the mode kept for an existing one. Temporary files that a killed effdsl left beside
the target are removed on the next write there; a SIGTERM runs the clean-up (see `effdsl.cli`).

The CLI runs each command inside `command_scope()`; files read inside it are the command's
inputs. Outside a scope (library use) nothing is tracked: the caller chose the paths.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from effdsl.errors import EffError, OutputError
from effdsl.text import printable

#: (device, inode) of every file the running command has read; None outside a command.
_INPUTS: contextvars.ContextVar[set[tuple[int, int]] | None] = contextvars.ContextVar(
    "effdsl_inputs", default=None
)


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """Track the files read inside the block as inputs that no write may replace."""
    token = _INPUTS.set(set())
    try:
        yield
    finally:
        _INPUTS.reset(token)


def _shown(path: str | Path) -> str:
    return printable(str(path))


# ---- reading --------------------------------------------------------------------------------


def open_input(path: str | Path, what: str = "file") -> BinaryIO:
    """Open a regular file for reading, refusing FIFOs, devices, sockets and directories.

    The open does not block (a FIFO without a writer would wait for ever); the file is then
    recorded as an input of the running command.
    """
    shown = _shown(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise EffError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise EffError(f"{shown}: is a directory, not a {what}") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        reason = error.strerror if isinstance(error, OSError) else "not a valid path"
        raise EffError(f"{shown}: cannot read: {reason}") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise EffError(
            f"{shown}: is {_kind(info.st_mode)}, not a {what}",
            hint="give a regular file (or - for standard input where the command takes it)",
        )
    os.set_blocking(descriptor, True)
    inputs = _INPUTS.get()
    if inputs is not None:
        inputs.add((info.st_dev, info.st_ino))
    return os.fdopen(descriptor, "rb")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_input(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; more is refused, unread."""
    with open_input(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise EffError(_too_large(path, size, limit, what))
        try:
            data = handle.read(limit + 1)  # the file may have grown since fstat
        except OSError as error:
            raise EffError(f"{_shown(path)}: cannot read: {error.strerror}") from None
    if len(data) > limit:
        raise EffError(_too_large(path, None, limit, what))
    return data


def read_stdin(limit: int, what: str = "file") -> bytes:
    """At most `limit` bytes of standard input; more is refused after reading `limit + 1`."""
    stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
    data = stream.read(limit + 1) if stream is not None else sys.stdin.read(limit + 1).encode()
    if len(data) > limit:
        raise EffError(_too_large("<stdin>", None, limit, what))
    return data


def _too_large(path: str | Path, size: int | None, limit: int, what: str) -> str:
    amount = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return f"{_shown(path)}: {amount} is too large for a {what} (the limit is {limit:,} bytes)"


def refuse_inputs(output: str | Path, *inputs: str | Path | None) -> None:
    """Refuse, before any work, an output path that names one of `inputs` (however spelt)."""
    for given in inputs:
        if given is not None and str(given) != "-" and same_file(output, given):
            raise OutputError(f"{_shown(output)}: refusing to overwrite the input {_shown(given)}")


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file (the output would overwrite the input)."""
    try:
        return os.path.samefile(a, b) or Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        try:
            return Path(a).resolve() == Path(b).resolve()
        except (OSError, ValueError):
            return False


# ---- writing --------------------------------------------------------------------------------

_TEMPORARY = re.compile(r"\.effdsl-(\d+)-[^/]*\.tmp\Z")


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    """Delete temporary files of `name` that an effdsl process no longer running left behind."""
    prefix = f".{name}.effdsl-"
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not entry.name.startswith(prefix):
                continue
            match = _TEMPORARY.search(entry.name[len(name) + 1 :])
            if match is None or _running(int(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _check_target(target: Path, *, replace_input: bool, replace: bool) -> None:
    shown = _shown(target)
    try:
        info = target.stat()
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not a valid path"
        raise OutputError(f"{shown}: cannot write: {reason}") from None
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{shown}: is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{shown}: is {_kind(info.st_mode)}; effdsl writes regular files only")
    if not replace:
        raise OutputError(f"{shown}: exists; refusing to replace it")
    inputs = _INPUTS.get()
    if not replace_input and inputs is not None and (info.st_dev, info.st_ino) in inputs:
        raise OutputError(f"{shown}: refusing to overwrite an input of this command")
    if not info.st_mode & 0o222 or not os.access(target, os.W_OK):
        raise OutputError(
            f"{shown}: is read-only; refusing to replace it",
            hint="make it writable (chmod u+w) or write elsewhere",
        )


@contextlib.contextmanager
def atomic_path(
    path: str | Path, *, replace_input: bool = False, replace: bool = True
) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it when the block succeeds.

    `replace_input=True` lets the write replace a file the command read (`fmt --write`);
    `replace=False` refuses any existing file (an output nobody asked for by name).
    """
    target = Path(path)
    if target.is_symlink():  # write the file the link points to, and keep the link
        target = Path(os.path.realpath(target))
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{_shown(target)}: directory {_shown(directory)} does not exist")
    _check_target(target, replace_input=replace_input, replace=replace)
    _remove_stale_temporaries(directory, target.name)
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.effdsl-{os.getpid()}-", suffix=".tmp", dir=directory
        )
    except OSError as error:
        raise OutputError(f"{_shown(target)}: cannot write: {error.strerror}") from None
    os.close(handle)
    temp = Path(temporary)
    try:
        yield temp
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
        os.chmod(temp, mode)
        _check_target(target, replace_input=replace_input, replace=replace)  # still true?
        os.replace(temp, target)
    except OSError as error:
        raise OutputError(f"{_shown(target)}: cannot write: {error.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def atomic_write(
    path: str | Path, data: str | bytes, *, replace_input: bool = False, replace: bool = True
) -> None:
    """Write `data` (text as UTF-8) to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, replace_input=replace_input, replace=replace) as temp:
        if isinstance(data, str):
            temp.write_text(data, encoding="utf-8")
        else:
            temp.write_bytes(data)
