"""Machinery shared by the load drivers in ``loadtest/`` (``rls_load.py``, ``check_load.py``,
``compare.py``, ``tokens.py``).

The modules, each importable on its own (``from harness import cpu``):

* ``processes``: start and stop child processes, free ports, readiness waits, server logs;
* ``redis_server``: a private ``redis-server`` on a free port;
* ``cpu``: CPU seconds from ``/proc`` (process trees, threads, the machine) and the idle wait;
* ``metrics``: mixerless's ``/metrics`` counters;
* ``generators``: the h2load and grpc.aio load generators and the measured ``Window``;
* ``stats``: percentiles and medians over runs;
* ``bench``: one scenario's run (idle wait, server, preflight, load, CPU window) and the run loop;
* ``options``: the command-line options every driver shares;
* ``report``: the text table, the JSON line and the versions it records;
* ``tokens``: pools of signed JWTs for the k6 and locust scenarios;
* ``stacks``: the gateway stacks (each with its own Envoy) and how to start them;
* ``envoy_configs``: the static Envoy configurations of the baseline stacks;
* ``k6``: one k6 run and its summary;
* ``gateway_checks``: preflight answers and Envoy's counters against what k6 sent;
* ``gateway_runs``: one measured run through one stack, with its flags;
* ``plots``: the PNG plots of a comparison.

The scenarios' requests and policies are in the sibling package ``scenarios``.
"""

from pathlib import Path

LOADTEST_DIR = Path(__file__).resolve().parent.parent
OUT_DIR = LOADTEST_DIR / "out"
RESULTS = OUT_DIR / "results.jsonl"
