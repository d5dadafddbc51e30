"""What a driver reports: its text table, the JSON line it appends, the versions it records."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from harness import LOADTEST_DIR

Columns = Sequence[tuple[str, int]]  # (title, width) of each column


def table_line(values: Sequence[str], columns: Columns) -> str:
    """One line of a right-aligned text table."""
    return "  ".join(v.rjust(w) for v, (_, w) in zip(values, columns, strict=True))


def table_header(columns: Columns) -> str:
    return "  ".join(name.rjust(width) for name, width in columns)


def versions() -> dict[str, str]:
    import redis
    from google.protobuf import __version__ as protobuf_version

    from services import __version__

    def command(argv: list[str]) -> str:
        if shutil.which(argv[0]) is None:
            return "not installed"
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "mixerless": __version__,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "redis-py": redis.__version__,
        "redis-server": command(["redis-server", "--version"]),
        "h2load": command(["h2load", "--version"]),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
    }


def services_digest(tree: Path) -> str:
    """A content hash of ``tree/services/**/*.py``: which server code was measured."""
    digest = hashlib.sha256()
    for path in sorted((tree / "services").rglob("*.py")):
        digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def served_code(server_tree: str | None) -> dict[str, str]:
    """``services_tree``: git HEAD of this checkout, and whether ``services/`` is dirty;
    ``served_services``: a content hash of the ``services`` package that was served."""
    root = LOADTEST_DIR.parent

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=root, capture_output=True, check=False)
        return done.stdout.decode(errors="replace")

    head = git("rev-parse", "--short=10", "HEAD").strip() or "unknown"
    diff = git("diff", "HEAD", "--", "services")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "services").split()
    digest = hashlib.sha256(diff.encode())
    for name in sorted(untracked):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    dirty = bool(diff or untracked)
    served = Path(server_tree) if server_tree else root
    return {
        "services_tree": head + (f"+dirty:{digest.hexdigest()[:10]}" if dirty else ""),
        "served_services": f"{served}/services sha256:{services_digest(served)}",
    }


def result_line(
    *,
    label: str,
    argv: Sequence[str] | None,
    config: Any,
    median: dict[str, Any],
    runs: Sequence[Any],
    versions: dict[str, str],
    driver: str | None = None,
    **more: Any,
) -> dict[str, Any]:
    """One invocation's JSON line: the configuration, the median, every run (dataclasses),
    ``more`` (e.g. discarded runs) and the versions."""
    line: dict[str, Any] = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if driver is not None:
        line["driver"] = driver
    line |= {
        "label": label,
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "config": asdict(config),
        "median": median,
        "runs": [asdict(r) for r in runs],
        **more,
        "versions": versions,
    }
    return line


def append_result(path: Path, line: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(line, default=str) + "\n")
    print(f"appended to {path}")
