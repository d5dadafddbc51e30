"""Reload the policy directory when it changes.

The watcher polls a cheap fingerprint of the directory (the resolved path, then
each policy file's path, inode, size and mtime) and reloads when it changes. Polling
catches everything inotify-based watchers miss here: Kubernetes ``..data``
symlink swaps, atomic renames over a file, a swapped directory symlink.
"""

import asyncio
import os
from pathlib import Path

import structlog

from services.catalog.files import PolicyDirectoryChangingError, policy_files
from services.catalog.loader import LoadOptions, PolicySet, load_directory
from services.catalog.state import PolicyState
from services.clock import Clock
from services.metrics import Metrics
from services.policy.errors import PolicyError, PolicyLoadError

log = structlog.get_logger("mixerless.policy")

Fingerprint = tuple[object, ...]


def fingerprint(directory: Path) -> Fingerprint:
    """What must change for the directory's policies to have changed."""
    parts: list[object] = [os.path.realpath(directory), directory.is_dir()]
    try:
        for path in policy_files(directory):
            try:
                stat = path.stat()
            except FileNotFoundError:
                parts.append((str(path), None))
                continue
            parts.append((str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    except OSError as exc:
        parts.append(("error", str(exc)))
    return tuple(parts)


class PolicyWatcher:
    """Loads ``directory`` into ``state`` now and on every change.

    Reading and compiling run in a worker thread; only the swap happens on the
    event loop, so requests keep being answered while a large directory loads. A load
    that fails in any way is a rejection (logged, counted, kept for ``/debug/config``):
    the serving set stays, and the watcher goes on looking for the next change.
    """

    def __init__(
        self,
        directory: Path,
        options: LoadOptions,
        state: PolicyState,
        metrics: Metrics,
        clock: Clock,
        *,
        interval: float = 0.5,
    ) -> None:
        self._directory = directory
        self._options = options
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        self._last: Fingerprint | None = None

    def reload(self) -> bool:
        """Load the directory once; True if a new policy set is now serving."""
        return self._apply(self._load())

    def _load(self) -> PolicySet | PolicyLoadError | None:
        self._last = fingerprint(self._directory)
        try:
            return load_directory(self._directory, self._options)
        except PolicyDirectoryChangingError:
            self._last = None  # mid-swap: look again on the next tick
            return None
        except PolicyLoadError as exc:
            if exc.__cause__ is not None:  # a bug, named in the errors: its traceback, once
                log.error(
                    "policy load failed unexpectedly",
                    directory=str(self._directory),
                    exc_info=exc.__cause__,
                )
            return exc
        except Exception as exc:  # load_directory turns file problems into errors; not this
            log.exception("policy load failed unexpectedly", directory=str(self._directory))
            message = f"the policy directory could not be loaded: {type(exc).__name__}"
            return PolicyLoadError([PolicyError(str(self._directory), 0, "", message)])

    def _apply(self, result: PolicySet | PolicyLoadError | None) -> bool:
        if result is None:
            return False
        if isinstance(result, PolicyLoadError):
            errors = tuple(str(e) for e in result.errors)
            self._metrics.policy_loads.labels("error").inc()
            self._state.reject(errors, self._clock.now())
            current = self._state.current
            log.error(
                "policy rejected",
                directory=str(self._directory),
                errors=list(errors),
                serving=current.digest if current else None,
            )
            return False
        current = self._state.current
        if current is not None and current.digest == result.digest:
            if self._state.last_rejection is not None:
                self._state.clear_rejection()
                log.info("policy change reverted to the serving set", digest=current.digest)
            return False
        now = self._clock.now()
        self._state.publish(result, now)
        self._metrics.policy_loads.labels("success").inc()
        self._metrics.set_policy(result.digest, now)
        if not result.files:
            log.warning(
                "policy directory has no policy files: nothing is limited or denied",
                directory=str(self._directory),
            )
        log.info(
            "policy loaded",
            directory=str(self._directory),
            digest=result.digest,
            files=len(result.files),
            domains=sorted(result.ratelimit.domains),
        )
        return True

    def changed(self) -> bool:
        return fingerprint(self._directory) != self._last

    async def run(self) -> None:
        """Load now, then poll for changes until cancelled."""
        self._apply(await asyncio.to_thread(self._load))
        while True:
            await asyncio.sleep(self._interval)
            if await asyncio.to_thread(self.changed):
                # Let a burst of writes settle, then load what is there.
                await asyncio.sleep(min(0.05, self._interval))
                self._apply(await asyncio.to_thread(self._load))
