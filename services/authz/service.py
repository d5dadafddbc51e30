"""One authorization decision, in Istio's order, independent of gRPC.

The service finds the current policy set and the plan of the request's workload
(``AuthzConfig.plan``), then runs the stages (``pipeline.run``): the path, CUSTOM
providers, JWT, then AUDIT/DENY/ALLOW, then the quotas of the request's route (one
hop: ``quota.py``). An allowed request carries the JWT and provider header changes
upstream, and the verified claims as dynamic metadata (for rate limits keyed on them).
"""

from collections.abc import Callable

from services.authz.answer import Denial, answer
from services.authz.config import AuthzConfig
from services.authz.model import CheckInput, Decision, Reason
from services.authz.pipeline import Trace, run
from services.authz.plan import WorkloadDefaults
from services.authz.quota import QuotaCounter, route_rules
from services.authz.stages import Authenticator, ProviderRegistry, Seams
from services.authz.workloads import parse_labels
from services.metrics import Metrics

__all__ = ["NO_POLICY", "AuthzService", "WorkloadDefaults"]

NO_POLICY = answer(Denial(503, "mixerless: no authorization policy loaded\n", Reason("default")))


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
    ) -> None:
        parse_labels(defaults.labels)  # malformed default labels fail here, not per request
        self._current_config = current_config
        self._defaults = defaults
        self._metrics = metrics
        self._seams = Seams(jwt, providers, self._provider_failed, quota)

    def _provider_failed(self, name: str) -> None:
        self._metrics.backend_errors.labels(f"provider:{name}").inc()

    async def check(self, check: CheckInput, trace: Trace | None = None) -> Decision:
        """The decision for ``check``; ``trace`` (if given) records what each stage returned."""
        config = self._current_config()
        if config is None:
            return NO_POLICY
        plan = config.plan(check.context, self._defaults)
        quotas = route_rules(config.quotas, check.context)
        return await run(config.mesh, plan, check, self._seams, trace, quotas)
