"""Envoy configuration as text: the bootstrap that points an Envoy at the xds service,
and the whole generated configuration, static, for Envoys run without xDS.
"""

import copy
from typing import Any

import yaml

from services.xds.gateway_config import gateway_resources
from services.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE

XDS_CLUSTER = "mixerless_xds"


def _admin(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


# How soon a gateway dials the xds service again after losing it: Envoy's default backoff
# grows to 30 s, so a restarted mixerless could wait that long for its Envoys to come back.
_RECONNECT = {"retry_policy": {"retry_back_off": {"base_interval": "0.5s", "max_interval": "5s"}}}


def bootstrap(
    node_id: str,
    xds_host: str,
    xds_port: int,
    *,
    admin_port: int = 9901,
    delta: bool = False,
    cluster: str = "",
) -> dict[str, Any]:
    """An Envoy bootstrap that takes everything else over ADS from ``xds_host:xds_port``."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": cluster or node_id},
        "admin": _admin(admin_port),
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER, **_RECONNECT}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STRICT_DNS",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                            "HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                                }
                            },
                        }
                    },
                }
            ]
        },
    }


def static_config(
    resources: dict[str, dict[str, dict[str, Any]]], admin_port: int
) -> dict[str, Any]:
    """The resources ``gateway_resources`` made, as one static Envoy config (no xDS)."""
    routes = resources[ROUTE]
    assignments = resources[ENDPOINT]
    listeners = []
    for listener in resources[LISTENER].values():
        listener = copy.deepcopy(listener)
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                name = hcm.pop("rds")["route_config_name"]
                hcm["route_config"] = copy.deepcopy(routes[name])
        listeners.append(listener)
    clusters = []
    for cluster in resources[CLUSTER].values():
        cluster = copy.deepcopy(cluster)
        if cluster.get("type") == "EDS":
            cluster.pop("eds_cluster_config")
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = copy.deepcopy(assignments[cluster["name"]])
        clusters.append(cluster)
    return {
        "admin": _admin(admin_port),
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def to_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


__all__ = ["bootstrap", "gateway_resources", "static_config", "to_yaml"]
