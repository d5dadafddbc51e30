"""What one service's documents mean for another: the catalog's translations.

Istio configures a gateway's HTTP connection manager from meshConfig, which
mixerless reads as an authz document (``MeshConfig`` or the ``istio`` ConfigMap);
the xds service builds listeners from the plain ``ListenerSettings`` made here. A
gateway's RateLimitPolicies, which the xds service turns into Envoy route actions or
leaves to the Check, become the authz service's ``QuotaRules`` here.
"""

from services.authz.mesh_config import MeshSettings
from services.authz.paths import PathNormalization
from services.authz.quota import QuotaRule, QuotaRules
from services.policy.re2 import full_matcher
from services.xds.build import ListenerSettings, RequestBody
from services.xds.kinds import XdsConfig
from services.xds.ratelimit_policy import (
    RateLimitPolicy,
    counted_in_check,
    method_regex,
    path_regex,
)

_MERGING = (PathNormalization.MERGE_SLASHES, PathNormalization.DECODE_AND_MERGE_SLASHES)


def listener_settings(mesh: MeshSettings) -> ListenerSettings:
    """Istio's gateway settings for ``mesh``: path normalization as Envoy flags, trusted
    proxies as XFF hops, and ``with_request_body`` when an extension provider wants the
    body (the largest ``maxRequestBytes``, partial only if every such provider allows it)."""
    mode = mesh.path_normalization
    wanted = [
        provider.include_request_body_in_check
        for provider in mesh.providers.values()
        if provider.include_request_body_in_check is not None
    ]
    body = None
    if wanted:
        body = RequestBody(
            max_request_bytes=max(b.max_request_bytes for b in wanted),
            allow_partial_message=all(b.allow_partial_message for b in wanted),
            pack_as_bytes=any(b.pack_as_bytes for b in wanted),
        )
    return ListenerSettings(
        normalize_path=mode is not PathNormalization.NONE,
        merge_slashes=mode in _MERGING,
        unescape_slashes=mode is PathNormalization.DECODE_AND_MERGE_SLASHES,
        xff_num_trusted_hops=mesh.num_trusted_proxies,
        request_body=body,
    )


def quota_rules(xds: XdsConfig) -> QuotaRules:
    """Each gateway route's RateLimitPolicies as the authz service counts them inside
    Check (one hop), with the same descriptors Envoy's route actions would send and the
    same RE2 matching (``route_actions`` in services/xds/ratelimit_policy.py)."""
    found: dict[tuple[str, str], tuple[QuotaRule, ...]] = {}
    for compiled in xds.gateways:
        gateway = compiled.gateway
        # One rule (and one RE2 compile) per policy, shared by the routes it covers.
        by_policy = {
            policy.key: _quota_rule(gateway.domain, policy) for policy in compiled.policies
        }
        for route in gateway.routes:
            if not counted_in_check(gateway, route):
                continue
            rules = tuple(
                by_policy[policy.key] for policy in compiled.policies if policy.covers(route.name)
            )
            if rules:
                found[(gateway.name, route.name)] = rules
    return found


def _quota_rule(domain: str, policy: RateLimitPolicy) -> QuotaRule:
    return QuotaRule(
        domain=domain,
        policy=policy.key,
        path=full_matcher(path_regex(policy.paths)) if policy.paths else None,
        method=full_matcher(method_regex(policy.methods)) if policy.methods else None,
        headers=policy.headers,
        count_key=policy.descriptor_key,
        count_from=policy.count_by,
        count_name=policy.count_value,
        deny_on_store_failure=policy.deny_on_store_failure,
    )
