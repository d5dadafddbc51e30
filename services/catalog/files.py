"""Which files of a policy directory are policy files, in a stable order, and reading one.

``*.yaml`` and ``*.yml`` anywhere below the directory, following symlinks
(Kubernetes ConfigMap mounts), skipping dotfiles and dot-directories (``..data``,
``.a.yaml.swp``) and editor leftovers (``#a.yaml#``, ``a.yaml~``).

Only regular files are read, and at most ``max_bytes`` of each (``read_policy_file``):
a FIFO, a device or a symlink to one (``/dev/zero``) is refused without blocking on it
or reading it, so one hostile name in a watched directory can neither hang the loader
nor exhaust its memory.
"""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

POLICY_SUFFIXES = (".yaml", ".yml")
DEFAULT_MAX_FILE_BYTES = 4 << 20


class PolicyDirectoryChangingError(Exception):
    """A file vanished while being read (an atomic swap in progress); try again shortly."""


class PolicyFileRefusedError(Exception):
    """A policy file that is not read at all: what it is, or why not."""


def read_policy_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), at most ``max_bytes``.

    Raises ``PolicyFileRefusedError`` for anything else (a FIFO, a device, a socket, a
    directory, a file over the cap, a dangling symlink, one that cannot be read) and
    ``PolicyDirectoryChangingError`` when the file vanished meanwhile.
    """
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        if os.path.islink(path):  # it stays missing until someone mends or removes the link
            target = os.readlink(path)
            raise PolicyFileRefusedError(f"is a symlink to a missing file ({target})") from None
        raise PolicyDirectoryChangingError(str(path)) from exc
    except OSError as exc:
        raise PolicyFileRefusedError(f"cannot be read: {exc.strerror}") from None
    try:
        found = os.fstat(fd)  # what was opened, not what the name pointed at before
        if not stat.S_ISREG(found.st_mode):
            raise PolicyFileRefusedError(f"is not a regular file ({_file_type(found.st_mode)})")
        if found.st_size > max_bytes:
            raise PolicyFileRefusedError(_too_large(found.st_size, max_bytes))
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:  # the file may grow while it is read
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise PolicyFileRefusedError(_too_large(size, max_bytes))
        return b"".join(chunks)
    except OSError as exc:
        raise PolicyFileRefusedError(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"is larger than the {max_bytes:,}-byte cap per policy file ({size:,} bytes or more;"
        " --max-policy-file-bytes)"
    )


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a file"


def is_policy_file(name: str) -> bool:
    """True for YAML files that are not hidden or editor leftovers (``#a.yaml#``, ``a.yaml~``)."""
    return name.endswith(POLICY_SUFFIXES) and not name.startswith((".", "#"))


def policy_files(directory: Path) -> Iterator[Path]:
    """Every policy file below ``directory``, in a stable order; symlink loops are cut."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_policy_file(name):
                yield Path(root, name)
