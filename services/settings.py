"""Settings, built once at start-up: command-line flag, else ``MIXERLESS_*`` env var, else default.

This is the only module that reads the environment. Every setting is declared
once in ``OPTIONS`` (flag, env var, parser, default, help); a malformed value
stops start-up with an error naming both the flag and the variable.
"""

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.authz.service import WorkloadDefaults
from services.authz.workloads import parse_labels
from services.grpc_server import ServerOptions
from services.policy.durations import parse_duration
from services.policy.loader import LoadOptions
from services.ratelimit.redis_url import parse_redis_target
from services.ratelimit.service import RateLimitOptions

ENV_PREFIX = "MIXERLESS_"
SERVICES = ("ratelimit", "authz", "xds")


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


# --- value parsers: text in, value out, ValueError with a reason otherwise -------------


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return port


def parse_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def parse_positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def parse_ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return value


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


def parse_workload_labels(text: str) -> str:
    """``k=v,k2=v2``, kept as text (the authz service parses it once)."""
    parse_labels(text)
    return text


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text.lower()

    return parse


def parse_header_names(text: str) -> tuple[str, str, str]:
    names = [n.strip() for n in text.split(",")]
    if len(names) != 3 or not all(names):
        raise ValueError(f"expected three comma-separated header names, got {text!r}")
    return names[0], names[1], names[2]


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: ``--flag`` / ``MIXERLESS_FLAG``, its parser, default and help."""

    flag: str
    parse: Callable[[str], Any]
    default: str
    help: str
    boolean: bool = False

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


OPTIONS: tuple[Option, ...] = (
    Option("policies", str, "policies", "policy directory to serve (watched for changes)"),
    Option("host", lambda text: text.strip().strip("[]"), "0.0.0.0", "listen address (IPv6 ok)"),
    Option("ratelimit-port", parse_port, "8081", "gRPC port of the rate limit service"),
    Option("authz-port", parse_port, "9001", "gRPC port of the authz (ext_authz) service"),
    Option("xds-port", parse_port, "18000", "gRPC port of the xds (ADS) service"),
    Option("http-port", parse_port, "8080", "HTTP port: /healthz /readyz /metrics /debug/config"),
    Option(
        "advertise-address",
        str,
        "127.0.0.1",
        "address gateway Envoys use to reach this mixerless (xDS, authz, ratelimit)",
    ),
    Option("only", parse_services, ",".join(SERVICES), "comma-separated services to run"),
    Option(
        "workload-namespace",
        str,
        "istio-system",
        "namespace of the gateway, when a CheckRequest does not say (context extension)",
    ),
    Option(
        "workload-labels",
        parse_workload_labels,
        "istio=ingressgateway",
        "labels of the gateway (k=v,...), when a CheckRequest does not say",
    ),
    Option(
        "jwks-refresh-interval", parse_duration, "20m", "how often remote JWKS are fetched again"
    ),
    Option("redis", parse_redis_url, "", "Redis URL for shared counters (empty: in memory)"),
    Option("redis-pool-size", parse_positive, "16", "Redis connections per node"),
    Option("redis-connect-timeout", parse_duration, "1s", "timeout to open a Redis connection"),
    Option("redis-timeout", parse_duration, "500ms", "timeout of one Redis round trip"),
    Option("expiration-jitter", parse_count, "300", "max random seconds added to Redis key TTLs"),
    Option("cache-key-prefix", str, "", "prefix of every counter key"),
    Option("local-cache-size", parse_count, "0", "over-limit keys kept in memory (0: off)"),
    Option("near-limit-ratio", parse_ratio, "0.8", "share of a limit counted as near_limit"),
    Option("shadow-mode", parse_bool, "false", "answer OK overall, whatever the limits", True),
    Option("quota-mode", parse_bool, "false", "treat every limit as a quota", True),
    Option("response-headers", parse_bool, "false", "add RateLimit-* headers to responses", True),
    Option(
        "response-header-names",
        parse_header_names,
        "RateLimit-Limit,RateLimit-Remaining,RateLimit-Reset",
        "names of the limit, remaining and reset headers",
    ),
    Option("dynamic-metadata", parse_bool, "false", "return rate limit dynamic metadata", True),
    Option("merge-domains", parse_bool, "false", "merge config files that share a domain", True),
    Option("reload-interval", parse_duration, "500ms", "how often to look for policy changes"),
    Option("shutdown-grace", parse_duration, "10s", "time in-flight calls get on SIGTERM"),
    Option("max-message-bytes", parse_positive, "4194304", "largest gRPC message accepted"),
    Option("log-level", parse_choice("debug", "info", "warning", "error"), "info", "log level"),
    Option("log-format", parse_choice("json", "console"), "console", "log line format"),
)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str
    pool_size: int
    connect_timeout: float
    timeout: float
    expiration_jitter: int


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``mixerless serve`` needs, resolved and validated."""

    policies: Path = Path("policies")
    services: frozenset[str] = frozenset(SERVICES)
    ratelimit_port: int = 8081
    authz_port: int = 9001
    xds_port: int = 18000
    http_port: int = 8080
    advertise_address: str = "127.0.0.1"
    workload: WorkloadDefaults = field(default_factory=WorkloadDefaults)
    jwks_refresh_interval: float = 1200.0
    redis: RedisSettings | None = None
    local_cache_size: int = 0
    ratelimit: RateLimitOptions = field(default_factory=RateLimitOptions)
    load: LoadOptions = field(default_factory=LoadOptions)
    server: ServerOptions = field(default_factory=ServerOptions)
    reload_interval: float = 0.5
    shutdown_grace: float = 10.0
    log_level: str = "info"
    log_format: str = "console"


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
    """Each option's value: flag, else env, else default; parsed, or ``SettingsError``.

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
    return LoadOptions(merge_domains=resolve(args, environ, CHECK_OPTIONS)["merge_domains"])


CHECK_OPTIONS = ("merge-domains",)
GATEWAY_OPTIONS = (
    "policies",
    "merge-domains",
    "advertise-address",
    "xds-port",
    "authz-port",
    "ratelimit-port",
)


def build_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The ``Settings`` for ``mixerless serve``."""
    v = resolve(args, environ)
    redis = None
    if v["redis"]:
        redis = RedisSettings(
            url=v["redis"],
            pool_size=v["redis_pool_size"],
            connect_timeout=v["redis_connect_timeout"],
            timeout=v["redis_timeout"],
            expiration_jitter=v["expiration_jitter"],
        )
    return Settings(
        policies=Path(v["policies"]),
        services=v["only"],
        ratelimit_port=v["ratelimit_port"],
        authz_port=v["authz_port"],
        xds_port=v["xds_port"],
        http_port=v["http_port"],
        advertise_address=v["advertise_address"],
        workload=WorkloadDefaults(v["workload_namespace"], v["workload_labels"]),
        jwks_refresh_interval=v["jwks_refresh_interval"],
        redis=redis,
        local_cache_size=v["local_cache_size"],
        ratelimit=RateLimitOptions(
            cache_key_prefix=v["cache_key_prefix"],
            near_limit_ratio=v["near_limit_ratio"],
            shadow_mode=v["shadow_mode"],
            quota_mode=v["quota_mode"],
            response_headers=v["response_headers"],
            header_names=v["response_header_names"],
            dynamic_metadata=v["dynamic_metadata"],
        ),
        load=LoadOptions(merge_domains=v["merge_domains"]),
        server=ServerOptions(host=v["host"], max_message_bytes=v["max_message_bytes"]),
        reload_interval=v["reload_interval"],
        shutdown_grace=v["shutdown_grace"],
        log_level=v["log_level"],
        log_format=v["log_format"],
    )
