"""One authorization decision, in Istio's order, independent of gRPC.

The service finds the current policy set and the plan of the request's workload
(``AuthzConfig.plan``), then runs the stages (``pipeline.run``): the path, CUSTOM
providers, JWT, then AUDIT/DENY/ALLOW, then the quotas of the request's route (one
hop: ``quota.py``). An allowed request carries the JWT and provider header changes
upstream, and the verified claims as dynamic metadata (for rate limits keyed on them).

**The decision cache.** What the stages up to RBAC decide depends only on the request
attributes the workload's policies read (``reads.py``, compiled per plan), so that
outcome (``pipeline.Evaluated``) is kept in a ``DecisionCache`` under exactly those
values, until the token's ``exp`` at the latest; the quota is still counted on every
request (``pipeline.finish``). Plans with CUSTOM policies are never cached. A new
policy set empties the cache (and keys start with their plan, so an old entry could
not match anyway). On the gRPC handler threads, concurrent misses of one key wait for
one evaluation (single flight); on the event loop, where nothing may block, each
evaluates.
"""

from collections.abc import Callable
from dataclasses import dataclass

from services.authz.answer import Denial, answer
from services.authz.config import AuthzConfig
from services.authz.decision_cache import Computed, DecisionCache
from services.authz.jwt.result import NO_RULES
from services.authz.model import CheckInput, Decision, Reason
from services.authz.pipeline import Evaluated, Trace, evaluate, finish, run
from services.authz.plan import WorkloadDefaults, WorkloadPlan
from services.authz.quota import QuotaCounter, route_rules
from services.authz.reads import DecisionKey, ttl_cap
from services.authz.stages import Authenticator, Normalized, ProviderRegistry, Seams
from services.authz.workloads import parse_labels
from services.clock import Clock, SystemClock
from services.inline import complete_now, on_loop
from services.metrics import Metrics

__all__ = ["NO_POLICY", "AuthzService", "WorkloadDefaults"]

NO_POLICY = answer(Denial(503, "mixerless: no authorization policy loaded\n", Reason("default")))


@dataclass(frozen=True, slots=True)
class DecisionCacheOptions:
    """The decision cache's bounds (``--decision-cache-size``, ``--decision-cache-ttl``)."""

    entries: int = 10_000  # 0: no cache
    ttl: float = 10.0  # seconds; a token's exp cuts it shorter


class AuthzService:
    """Answers Check calls against the config ``current_config`` returns."""

    def __init__(
        self,
        current_config: Callable[[], AuthzConfig | None],
        jwt: Authenticator,
        providers: ProviderRegistry,
        metrics: Metrics,
        defaults: WorkloadDefaults,
        quota: QuotaCounter | None = None,
        *,
        clock: Clock | None = None,
        cache: DecisionCacheOptions = DecisionCacheOptions(),
    ) -> None:
        parse_labels(defaults.labels)  # malformed default labels fail here, not per request
        self._current_config = current_config
        self._defaults = defaults
        self._metrics = metrics
        self._seams = Seams(jwt, providers, self._provider_failed, quota)
        self._clock = clock if clock is not None else SystemClock()
        self.decisions: DecisionCache[Evaluated] | None = None
        if cache.entries > 0:
            # ±10 % jitter: entries made together do not all expire together.
            self.decisions = DecisionCache(cache.entries, cache.ttl, jitter=0.1)
        self._cached_for: AuthzConfig | None = None  # the set the cache's entries belong to

    def _provider_failed(self, name: str) -> None:
        self._metrics.backend_errors.labels(f"provider:{name}").inc()

    async def check(self, check: CheckInput, trace: Trace | None = None) -> Decision:
        """The decision for ``check``; ``trace`` (if given) records what each stage returned."""
        config = self._current_config()
        if config is None:
            return NO_POLICY
        plan = config.plan(check.context, self._defaults)
        quotas = route_rules(config.quotas, check.context)
        cache = self.decisions
        if cache is not None and trace is None:
            key = config.reads(plan).key(check)
            if key is not None:
                if config is not self._cached_for:  # a new policy set: drop the old answers
                    cache.clear()
                    self._cached_for = config
                evaluated, normalized = await self._evaluated(cache, key, config, plan, check)
                return await finish(
                    config.mesh, evaluated, check, self._seams, None, quotas, normalized
                )
        return await run(config.mesh, plan, check, self._seams, trace, quotas)

    async def _evaluated(
        self,
        cache: DecisionCache[Evaluated],
        key: DecisionKey,
        config: AuthzConfig,
        plan: WorkloadPlan,
        check: CheckInput,
    ) -> tuple[Evaluated, Normalized | None]:
        """The stages up to RBAC for ``check``: cached, or evaluated (and kept)."""
        now = self._clock.monotonic()
        normalized: Normalized | None = None

        async def evaluated() -> Computed[Evaluated]:
            nonlocal normalized
            result, normalized = await evaluate(config.mesh, plan, check, self._seams)
            return Computed(result, ttl_cap(result.token or NO_RULES, self._clock.now()))

        if on_loop():  # never block the loop waiting for another evaluation
            found = cache.get(key, now)
            if found is not None:
                return found, None
            computed = await evaluated()
            if computed.ttl_cap is not None:
                cache.put(key, computed.value, now, computed.ttl_cap)
            return computed.value, normalized
        # A handler thread: one evaluation per key at a time. One that must wait for I/O
        # raises NeedsLoop out of here, and the Check starts again on the loop.
        value = cache.get_or_compute(key, lambda: complete_now(evaluated()), now)
        return value, normalized
