"""Users of an Envoy gateway guarded by mixerless, with every answer judged (locust).

The same user story and judge as ``loadtest/k6/gateway.js``. From the repository root::

    .venv/bin/python loadtest/tokens.py          # a fresh pool -> loadtest/out/tokens.json
    TOKENS=loadtest/out/tokens.json .venv/bin/locust -f loadtest/locustfile.py --headless \\
        -u 20 -r 20 -t 30s --host http://127.0.0.1:10000 --csv loadtest/out/locust --only-summary

Open loop: ``RATE_PER_USER=5`` (requests per second per locust User) before the command;
unset, every User sends its next request as soon as the last one is answered. Web UI: drop
``--headless`` (and ``-u -r -t --only-summary``) and open http://127.0.0.1:8089.

Any gateway: ``--host https://gateway.example.com``, with ``API_PATH``, ``QUOTA_PATH`` and
``ADMIN_PATH`` for its routes (an empty value skips the classes on that path). Any token
source: ``TOKENS=pool.json``, a JSON object with ``users`` [{sub, token}] (classes api,
quota, admin), ``staff`` [{sub, token}] with groups [staff] (staff), ``expired`` [token]
(expired) and ``bad_signature`` [token] (bad_signature); a class whose list is empty is
skipped, and ``missing`` needs no token. ``loadtest/tokens.py --key --issuer --kid
--audience`` writes such a pool for your own issuer.

Request classes (weights; ``MIX=api=50,quota=50`` replaces them, unnamed classes get 0):

    api 45            GET $API_PATH (/api/orders), a user token    -> 200
    quota 35          GET $QUOTA_PATH/<1..1000> (/product)         -> 200 or 429, judged below
    missing 6         GET $API_PATH, no authorization              -> 403
    expired 5         GET $API_PATH, an expired token              -> 401
    bad_signature 4   GET $API_PATH, a token with a bad signature  -> 401
    admin 3           GET $ADMIN_PATH (/admin), a user token       -> 403
    staff 2           GET $ADMIN_PATH, a staff token               -> 200

Quota judge: ``QUOTA_LIMIT`` (100) requests per ``QUOTA_WINDOW`` (60) seconds per subject,
in windows aligned to the Unix epoch, counting over-limit requests too (envoyproxy/ratelimit).
Locust User k owns pool users i with i % OWNERS == k % OWNERS (``OWNERS``, default 100 or
the pool size if smaller), so each subject's count is known. That needs at most OWNERS
Users, one locust process (no --processes or --master), and a pool nobody used in the last
window: ``tokens.py`` names fresh subjects every time, so mint one per run. Every 10th User
sends all its quota requests as one user, so it goes over quota. ``QUOTA_JUDGE=lenient``
accepts 200 and 429 for every quota request (for limiters that are not epoch-aligned fixed
windows, such as Envoy's local_ratelimit token bucket, or a gateway on another clock).

A wrong answer is a locust failure ("wrong: expected 403, got 200") in the class's row;
a right answer slower than ``SLOW_MS`` (1000) counts as slow. At the end the judge's
summary is printed and, with ``JUDGE_JSON=path``, written as JSON; any wrong answer makes
the exit status 1.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from locust import FastHttpUser, constant, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("judge")

CLASSES = ("api", "quota", "missing", "expired", "bad_signature", "admin", "staff")
DEFAULT_MIX = "api=45,quota=35,missing=6,expired=5,bad_signature=4,admin=3,staff=2"
FIXED_ANSWER = {
    "api": 200,
    "missing": 403,
    "expired": 401,
    "bad_signature": 401,
    "admin": 403,
    "staff": 200,
}
QUOTA_ANSWERS = (200, 429)


def _load_pool() -> dict[str, Any]:
    if os.environ.get("TOKENS"):
        path = Path(os.environ["TOKENS"])
    else:
        path = Path("loadtest/out/tokens.json")
        if not path.exists():
            path = Path(__file__).resolve().parent / "out" / "tokens.json"
    if not path.exists():
        sys.exit(f"no token pool at {path}: run .venv/bin/python loadtest/tokens.py, or set TOKENS")
    pool: dict[str, Any] = json.loads(path.read_text())
    return pool


def _parse_mix(text: str) -> dict[str, float]:
    mix = dict.fromkeys(CLASSES, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = (s.strip() for s in part.partition("="))
        if name not in mix or not weight.replace(".", "", 1).isdigit():
            sys.exit(f"MIX: {part!r} is not <class>=<weight> (classes: {', '.join(CLASSES)})")
        mix[name] = float(weight)
    return mix


POOL = _load_pool()
USERS: list[dict[str, str]] = POOL.get("users", [])
STAFF: list[dict[str, str]] = POOL.get("staff", [])
EXPIRED: list[str] = POOL.get("expired", [])
BAD_SIGNATURE: list[str] = POOL.get("bad_signature", [])

API_PATH = os.environ.get("API_PATH", "/api/orders")
QUOTA_PATH = os.environ.get("QUOTA_PATH", "/product")
ADMIN_PATH = os.environ.get("ADMIN_PATH", "/admin")
QUOTA_LIMIT = int(os.environ.get("QUOTA_LIMIT", "100"))
QUOTA_WINDOW = float(os.environ.get("QUOTA_WINDOW", "60"))
STRICT = os.environ.get("QUOTA_JUDGE", "exact") != "lenient"
SLOW_MS = float(os.environ.get("SLOW_MS", "1000"))
RATE_PER_USER = float(os.environ.get("RATE_PER_USER") or 0)
OWNERS = int(os.environ.get("OWNERS") or min(100, len(USERS)) or 1)
if USERS and len(USERS) < OWNERS:
    sys.exit(f"OWNERS={OWNERS} is more than the pool's {len(USERS)} users")

# What each class needs: its path, and a non-empty token list (missing needs none).
NEEDS: dict[str, tuple[str, list[Any]]] = {
    "api": (API_PATH, USERS),
    "quota": (QUOTA_PATH, USERS),
    "missing": (API_PATH, [None]),
    "expired": (API_PATH, EXPIRED),
    "bad_signature": (API_PATH, BAD_SIGNATURE),
    "admin": (ADMIN_PATH, USERS),
    "staff": (ADMIN_PATH, STAFF),
}
MIX = {
    name: weight
    for name, weight in _parse_mix(os.environ.get("MIX", DEFAULT_MIX)).items()
    if weight > 0 and all(NEEDS[name])
}
if not MIX:
    sys.exit("no request class left to send: check MIX, the *_PATH variables and TOKENS")
NAMES, WEIGHTS = list(MIX), list(MIX.values())


class Sent(NamedTuple):
    sub: str
    window: int
    lo: int
    hi: int


class QuotaJudge:
    """Which answers are right for one subject's quota request, from what it sent before."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        # sub -> window -> [lo, hi]: how many of its requests the server may have counted
        self.counted: dict[str, dict[int, list[int]]] = {}

    def send(self, sub: str, t0: float) -> Sent:
        """Note a request about to be sent at ``t0``: its window, and what that held before."""
        w0 = math.floor(t0 / self.window)
        windows = self.counted.setdefault(sub, {})
        for old in [w for w in windows if w < w0 - 1]:
            del windows[old]
        lo, hi = windows.setdefault(w0, [0, 0])
        # Raised now: a request that gets no answer may still have been counted.
        windows[w0][1] += 1
        return Sent(sub, w0, lo, hi)

    def answer(self, sent: Sent, t1: float, status: int) -> tuple[int, ...]:
        """The right answers for a request ``send`` noted, answered at ``t1`` with ``status``."""
        sub, w0, lo, hi = sent
        w1 = math.floor(t1 / self.window)
        windows = self.counted.setdefault(sub, {})
        if w1 != w0:
            windows.setdefault(w1, [0, 0])[1] += 1
            return QUOTA_ANSWERS
        if status in QUOTA_ANSWERS:  # it reached the rate limit service, so it was counted
            windows.setdefault(w0, [0, 1])[0] += 1
        if not STRICT:
            return QUOTA_ANSWERS
        if hi + 1 <= self.limit:
            return (200,)
        if lo + 1 > self.limit:
            return (429,)
        return QUOTA_ANSWERS


class Tally:
    """The judge's process-wide counts for one test."""

    def __init__(self) -> None:
        self.by_class: dict[str, Counter[int]] = {}
        self.wrong_by_class: Counter[str] = Counter()
        self.slow = 0

    def add(self, kind: str, status: int, right: bool, slow: bool) -> None:
        self.by_class.setdefault(kind, Counter())[status] += 1
        self.wrong_by_class[kind] += not right
        self.slow += right and slow

    def report(self) -> dict[str, Any]:
        judged = sum(sum(c.values()) for c in self.by_class.values())
        wrong = sum(self.wrong_by_class.values())
        by_class = self.by_class.items()
        return {
            "judged": judged,
            "right": judged - wrong,
            "wrong": wrong,
            "slow": self.slow,
            "by_class": {k: {str(s): n for s, n in sorted(c.items())} for k, c in by_class},
            "wrong_by_class": {k: self.wrong_by_class[k] for k in self.by_class},
        }


JUDGE = QuotaJudge(QUOTA_LIMIT, QUOTA_WINDOW)
TALLY = Tally()
_next_owner = itertools.count()
_free_owners: list[int] = []  # owner indexes of stopped Users, given to the next ones
_problems: list[str] = []


def _problem(message: str) -> None:
    if message not in _problems:
        _problems.append(message)
        log.error(message)


class GatewayUser(FastHttpUser):
    host = "http://127.0.0.1:10000"
    wait_time = constant_throughput(RATE_PER_USER) if RATE_PER_USER > 0 else constant(0)

    def on_start(self) -> None:
        self.owner = heapq.heappop(_free_owners) if _free_owners else next(_next_owner)
        if self.owner >= OWNERS and STRICT:
            _problem(
                f"more locust Users than OWNERS={OWNERS}: Users share pool users, so the quota "
                "judge is wrong. Raise OWNERS (at most the pool size) or run fewer Users."
            )
        self.owned = USERS[self.owner % OWNERS :: OWNERS]
        self.heavy = self.owner % 10 == 0

    def on_stop(self) -> None:
        heapq.heappush(_free_owners, self.owner)

    @task
    def ask(self) -> None:
        kind = random.choices(NAMES, WEIGHTS)[0]
        path, token, sub = NEEDS[kind][0], None, None
        if kind == "quota":
            user = self.owned[0] if self.heavy else random.choice(self.owned)
            path, token, sub = f"{QUOTA_PATH}/{random.randint(1, 1000)}", user["token"], user["sub"]
        elif kind in ("api", "admin"):
            token = random.choice(self.owned)["token"]
        elif kind == "staff":
            token = random.choice(STAFF)["token"]
        elif kind in ("expired", "bad_signature"):
            token = random.choice(NEEDS[kind][1])
        headers = {"authorization": f"Bearer {token}"} if token else {}

        t0 = time.time()
        sent = JUDGE.send(sub, t0) if sub else None
        with self.client.get(path, name=kind, headers=headers, catch_response=True) as response:
            t1 = time.time()
            status = response.status_code or 0
            expected = JUDGE.answer(sent, t1, status) if sent else (FIXED_ANSWER[kind],)
            right = status in expected
            TALLY.add(kind, status, right, slow=(t1 - t0) * 1000 > SLOW_MS)
            if right:
                response.success()
            else:
                response.failure(f"wrong: expected {' or '.join(map(str, expected))}, got {status}")


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    if STRICT and isinstance(environment.runner, (MasterRunner, WorkerRunner)):
        _problem(
            "the quota judge needs one locust process: every process would own the same pool "
            "users. Drop --processes/--master/--worker, or set QUOTA_JUDGE=lenient."
        )


@events.test_start.add_listener
def _on_test_start(**_: Any) -> None:
    global TALLY
    TALLY = Tally()


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    report = TALLY.report()
    print(
        f"judge: {report['judged']} answers judged, {report['right']} right, "
        f"{report['wrong']} wrong, {report['slow']} slow (> {SLOW_MS:g} ms)"
    )
    for kind, statuses in report["by_class"].items():
        counts = " ".join(f"{status}x{n}" for status, n in statuses.items())
        print(f"  {kind:<14} {report['wrong_by_class'][kind]:>6} wrong   {counts}")
    if os.environ.get("JUDGE_JSON"):
        path = Path(os.environ["JUDGE_JSON"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
    if report["wrong_by_class"].get("quota"):
        _problem(
            f"{report['wrong']} wrong answers: were the pool's users already sending in this "
            "window (an earlier run)? Each run needs a fresh pool (loadtest/tokens.py)."
        )
    elif report["wrong"]:
        _problem(f"{report['wrong']} wrong answers")


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    if _problems:
        environment.process_exit_code = 1
