"""Which files of a policy directory are policy files, in a stable order.

``*.yaml`` and ``*.yml`` anywhere below the directory, following symlinks
(Kubernetes ConfigMap mounts), skipping dotfiles and dot-directories (``..data``,
``.a.yaml.swp``) and editor leftovers (``#a.yaml#``, ``a.yaml~``).
"""

import os
from collections.abc import Iterator
from pathlib import Path

POLICY_SUFFIXES = (".yaml", ".yml")


class PolicyDirectoryChangingError(Exception):
    """A file vanished while being read (an atomic swap in progress); try again shortly."""


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
