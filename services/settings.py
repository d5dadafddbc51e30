"""Settings, built once at start-up: command-line flag, else ``MIXERLESS_*`` env var, else default.

This is the only module that reads the environment. ``Settings`` is the table (the
vocabulary it is written in, ``Option`` and ``setting``/``part``, is ``options.py``):
each field is declared once, with the option that fills it (flag, parser, default
text, help; the variable is ``MIXERLESS_`` + the flag), the way envoyproxy/ratelimit
tags each field of its one settings struct. A field made of several options (the
rate limit switches, the Redis connection, ...) is a ``part`` listing them by the
field of the object they land in. Defaults are the parsed default texts, so a
``Settings()`` built in a test is what ``mixerless serve`` runs with nothing given.

A malformed value stops start-up with one line per bad setting naming both the
flag and the variable.

To add a setting: add one field to ``Settings`` (or one ``Option`` to its ``part``,
plus the field it lands in), and its row to the table in docs/operations.md
(``tests/unit/test_settings.py`` checks the two agree).
"""

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.authz.plan import WorkloadDefaults
from services.authz.service import DecisionCacheOptions
from services.authz.workloads import parse_labels
from services.catalog.loader import LoadOptions
from services.grpc_server import ServerOptions
from services.options import (
    Option,
    field_values,
    optional_part,
    options_of,
    parse_bool,
    parse_bytes,
    parse_choice,
    parse_count,
    parse_header_names,
    parse_host,
    parse_port,
    parse_positive,
    parse_ratio,
    part,
    setting,
)
from services.policy.durations import parse_duration
from services.ratelimit.redis_settings import RedisSettings
from services.ratelimit.redis_url import parse_redis_target
from services.ratelimit.service import RateLimitOptions
from services.worker_ports import WorkerRole

SERVICES = ("ratelimit", "authz", "xds")


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


# --- domain values ---------------------------------------------------------------------


def parse_redis_url(text: str) -> str | None:
    """A Redis URL checked in full (scheme, hosts, db, TLS options) at start-up."""
    if not text.strip():
        return None
    parse_redis_target(text.strip())
    return text.strip()


def parse_services(text: str) -> frozenset[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(SERVICES)
    if unknown or not names:
        raise ValueError(
            f"unknown service {', '.join(sorted(unknown)) or '(none)'}; "
            f"available: {', '.join(SERVICES)}"
        )
    return frozenset(names)


def parse_worker_index(text: str) -> int:
    """A worker's index (0 or more), or -1: this process is no worker."""
    value = int(text)
    if value < -1:
        raise ValueError(f"must be -1 (no worker) or more, got {value}")
    return value


def parse_optional_path(text: str) -> Path | None:
    """A path, or None for empty text."""
    return Path(text) if text.strip() else None


def parse_workload_labels(text: str) -> str:
    """``k=v,k2=v2``, kept as text (the authz service parses it once)."""
    parse_labels(text)
    return text


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``mixerless serve`` needs, resolved and validated; each field's option.

    ``setting``, ``part`` and ``optional_part`` return ``dataclasses.field()``s (ruff's
    RUF009 cannot see through them, so pyproject.toml turns it off for this module).
    """

    policies: Path = setting(
        "policies", Path, "policies", "policy directory to serve (watched for changes)"
    )
    server: ServerOptions = part(
        ServerOptions,
        host=Option("host", parse_host, "0.0.0.0", "listen address (IPv6 ok)"),
        max_message_bytes=Option(
            "max-message-bytes", parse_positive, "4194304", "largest gRPC message accepted"
        ),
        threads=Option(
            "grpc-threads",
            parse_positive,
            "4",
            "handler threads of the authz and ratelimit gRPC servers, each",
        ),
    )
    ratelimit_port: int = setting(
        "ratelimit-port", parse_port, "8081", "gRPC port of the rate limit service"
    )
    authz_port: int = setting(
        "authz-port", parse_port, "9001", "gRPC port of the authz (ext_authz) service"
    )
    xds_port: int = setting("xds-port", parse_port, "18000", "gRPC port of the xds (ADS) service")
    http_port: int = setting(
        "http-port", parse_port, "8080", "HTTP port: /healthz /readyz /metrics /debug/config"
    )
    advertise_address: str = setting(
        "advertise-address",
        str,
        "127.0.0.1",
        "address gateway Envoys use to reach this mixerless (xDS, authz, ratelimit)",
    )
    services: frozenset[str] = setting(
        "only", parse_services, ",".join(SERVICES), "comma-separated services to run"
    )
    workers: int = setting(
        "workers",
        parse_count,
        "0",
        "processes answering authz and ratelimit calls (0: one per CPU this process may "
        "use; 1: this process alone)",
    )
    worker_port_base: int = setting(
        "worker-port-base",
        parse_port,
        "20000",
        "first of each worker's own ports: authz base+3i, ratelimit +1, http +2 (0: any free)",
    )
    workload: WorkloadDefaults = part(
        WorkloadDefaults,
        namespace=Option(
            "workload-namespace",
            str,
            "istio-system",
            "namespace of the gateway, when a CheckRequest does not say (context extension)",
        ),
        labels=Option(
            "workload-labels",
            parse_workload_labels,
            "istio=ingressgateway",
            "labels of the gateway (k=v,...), when a CheckRequest does not say",
        ),
    )
    decision_cache: DecisionCacheOptions = part(
        DecisionCacheOptions,
        entries=Option(
            "decision-cache-size",
            parse_count,
            "10000",
            "authz decisions kept, keyed by what the policies read (0: off)",
        ),
        ttl=Option(
            "decision-cache-ttl",
            parse_duration,
            "10s",
            "longest a cached decision is served (a token's exp cuts it shorter)",
        ),
    )
    jwks_refresh_interval: float = setting(
        "jwks-refresh-interval", parse_duration, "20m", "how often remote JWKS are fetched again"
    )
    redis: RedisSettings | None = optional_part(
        RedisSettings,
        "url",
        url=Option(
            "redis", parse_redis_url, "", "Redis URL for shared counters (empty: in memory)"
        ),
        pool_size=Option("redis-pool-size", parse_positive, "16", "Redis connections per node"),
        connect_timeout=Option(
            "redis-connect-timeout", parse_duration, "1s", "timeout to open a Redis connection"
        ),
        timeout=Option("redis-timeout", parse_duration, "500ms", "timeout of one Redis round trip"),
        expiration_jitter=Option(
            "expiration-jitter", parse_count, "300", "max random seconds added to Redis key TTLs"
        ),
    )
    lease_processes: int = setting(
        "lease-processes",
        parse_positive,
        "1",
        "mixerless processes sharing the Redis counters (sizes leases of counting: leased)",
    )
    local_cache_size: int = setting(
        "local-cache-size", parse_count, "0", "over-limit keys kept in memory (0: off)"
    )
    memory_max_counters: int = setting(
        "memory-max-counters",
        parse_positive,
        "1000000",
        "counters held in memory without Redis; past it, the nearest their window end go",
    )
    ratelimit: RateLimitOptions = part(
        RateLimitOptions,
        cache_key_prefix=Option("cache-key-prefix", str, "", "prefix of every counter key"),
        near_limit_ratio=Option(
            "near-limit-ratio", parse_ratio, "0.8", "share of a limit counted as near_limit"
        ),
        shadow_mode=Option(
            "shadow-mode", parse_bool, "false", "answer OK overall, whatever the limits"
        ),
        quota_mode=Option("quota-mode", parse_bool, "false", "treat every limit as a quota"),
        response_headers=Option(
            "response-headers", parse_bool, "false", "add RateLimit-* headers to responses"
        ),
        header_names=Option(
            "response-header-names",
            parse_header_names,
            "RateLimit-Limit,RateLimit-Remaining,RateLimit-Reset",
            "names of the limit, remaining and reset headers",
        ),
        dynamic_metadata=Option(
            "dynamic-metadata", parse_bool, "false", "return rate limit dynamic metadata"
        ),
    )
    load: LoadOptions = part(
        LoadOptions,
        merge_domains=Option(
            "merge-domains", parse_bool, "false", "merge config files that share a domain"
        ),
        max_file_bytes=Option(
            "max-policy-file-bytes",
            parse_bytes,
            "4MiB",
            "larger policy files are refused unread (KiB, MiB, GiB or bytes)",
        ),
    )
    reload_interval: float = setting(
        "reload-interval", parse_duration, "500ms", "how often to look for policy changes"
    )
    shutdown_grace: float = setting(
        "shutdown-grace", parse_duration, "10s", "time in-flight calls get on SIGTERM"
    )
    log_level: str = setting(
        "log-level", parse_choice("debug", "info", "warning", "error"), "info", "log level"
    )
    log_format: str = setting(
        "log-format", parse_choice("json", "console"), "console", "log line format"
    )
    worker: WorkerRole = part(
        WorkerRole,
        index=Option(
            "worker-index", parse_worker_index, "-1", "set by the parent: this worker's index"
        ),
        authz_port=Option(
            "worker-authz-port", parse_port, "0", "set by the parent: this worker's authz port"
        ),
        ratelimit_port=Option(
            "worker-ratelimit-port",
            parse_port,
            "0",
            "set by the parent: this worker's ratelimit port",
        ),
        lease_socket=Option(
            "lease-socket",
            parse_optional_path,
            "",
            "set by the parent: the Unix socket of its counters",
        ),
    )


OPTIONS: tuple[Option, ...] = options_of(Settings)
"""Every option, in ``Settings`` order: what ``--help`` and docs/operations.md list."""

CHECK_OPTIONS = ("merge-domains", "max-policy-file-bytes")
GATEWAY_OPTIONS = (
    "policies",
    "merge-domains",
    "max-policy-file-bytes",
    "advertise-address",
    "xds-port",
    "authz-port",
    "ratelimit-port",
)


def add_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """Add ``--flag`` for every option (or those in ``only``); defaults stay None."""
    for option in OPTIONS:
        if only is not None and option.flag not in only:
            continue
        help_text = f"{option.help} [env {option.env}, default {option.default!r}]"
        if option.boolean:
            parser.add_argument(
                f"--{option.flag}", action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(f"--{option.flag}", metavar="VALUE", help=help_text)


def resolve(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Each option's value by ``dest``: flag, else env, else default; parsed, or
    ``SettingsError`` listing every malformed one.

    With ``only``, just those options are resolved (``mixerless check`` needs one).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    errors: list[str] = []
    for option in OPTIONS:
        if only is not None and option.flag not in only:
            continue
        given = getattr(args, option.dest, None)
        if isinstance(given, bool):
            values[option.dest] = given
            continue
        source, text = "default", option.default
        if given is not None:
            source, text = f"--{option.flag}", given
        elif option.env in env:
            source, text = option.env, env[option.env]
        try:
            values[option.dest] = option.parse(text)
        except ValueError as exc:
            errors.append(f"--{option.flag} / {option.env} (from {source}): {exc}")
    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    return values


def build_load_options(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> LoadOptions:
    """The options ``mixerless check`` compiles with."""
    values = resolve(args, environ, CHECK_OPTIONS)
    return LoadOptions(
        merge_domains=values["merge_domains"], max_file_bytes=values["max_policy_file_bytes"]
    )


def build_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The ``Settings`` for ``mixerless serve``: every field from its option(s)."""
    return Settings(**field_values(Settings, resolve(args, environ)))
