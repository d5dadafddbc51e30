"""Redis URLs for the counter store: text in, a validated ``RedisTarget`` out.

Accepted forms (``[user:]password@`` is optional everywhere, percent-encoded):

- ``redis://[[user]:password@]host[:port][/db]``: one server (port 6379).
- ``rediss://...``: the same over TLS.
- ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``: one server on a Unix socket.
- ``redis+sentinel://[[user]:password@]host1[:port],host2[:port]/master-name[/db]``:
  the master that the Sentinels (port 26379) name ``master-name``. The credentials
  authenticate to the master; the Sentinels are asked without credentials.
- ``rediss+sentinel://...``: the same, TLS to the master (the Sentinels in clear).
- ``redis+cluster://[[user]:password@]host1[:port],host2[:port][,...]``: a Redis
  Cluster, discovered from any of the listed nodes (database 0 only).
- ``rediss+cluster://...``: the same over TLS.

Query parameters: ``db`` (not for clusters) and, with a TLS scheme only,
``ssl_cert_reqs`` (none, optional or required), ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_ciphers`` and ``ssl_check_hostname`` (true or false); they are
handed to redis-py under the same names. Anything else is refused, so a typo
fails at start-up rather than on the first request. Every problem raises
``ValueError`` naming the URL (password masked) and what is wrong with it.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

Mode = Literal["server", "unix", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_TLS_TEXT_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ciphers")
_CERT_REQS = ("none", "optional", "required")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the counters live and how to reach them; ``addresses`` is empty for ``unix``."""

    mode: Mode
    tls: bool
    addresses: tuple[tuple[str, int], ...] = ()
    socket_path: str | None = None
    master_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls_options: Mapping[str, str | bool] = field(default_factory=dict)


def redact(url: str) -> str:
    """``url`` with the password, if any, replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{hosts}{rest[end:]}"


def parse_redis_target(url: str) -> RedisTarget:
    """Parse and check a Redis URL of one of the forms in the module docstring."""
    try:
        return _parse(url)
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {redact(url)!r}: {exc}") from None


def _parse(url: str) -> RedisTarget:
    parts = urlsplit(url.strip())
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(_SCHEMES)}, got {parts.scheme!r}")
    if parts.fragment:
        raise ValueError("a fragment (#...) is not allowed")
    mode, tls = _SCHEMES[parts.scheme]
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    query = _query(parts.query, tls=tls)
    query_db = query.pop("db", None)
    path = unquote(parts.path)
    segments = [segment for segment in path.split("/") if segment]
    target = RedisTarget(mode, tls, username=username, password=password, tls_options=query)

    if mode == "unix":
        if hosts:
            raise ValueError(f"a unix URL takes no host, got {hosts!r}; write unix:///path")
        if not segments:
            raise ValueError("no socket path; write unix:///path/to/redis.sock")
        return replace(target, socket_path=path, db=_db(query_db, None))

    default_port = 26379 if mode == "sentinel" else 6379
    addresses = tuple(_address(item, default_port) for item in hosts.split(","))
    target = replace(target, addresses=addresses)
    if mode == "server":
        if len(addresses) != 1:
            raise ValueError(
                "several hosts need redis+cluster:// or redis+sentinel://, "
                f"got {len(addresses)} hosts"
            )
        if len(segments) > 1:
            raise ValueError(f"path must be /<db>, got {path!r}")
        return replace(target, db=_db(query_db, segments[0] if segments else None))
    if mode == "sentinel":
        if not 1 <= len(segments) <= 2:
            raise ValueError(f"path must be /<master-name>[/<db>], got {path!r}")
        db = _db(query_db, segments[1] if len(segments) == 2 else None)
        return replace(target, master_name=segments[0], db=db)
    if query_db is not None or segments not in ([], ["0"]):
        raise ValueError("a Redis Cluster has only database 0; remove the /<db> or ?db=")
    return target


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError("credentials must be user:password@ or :password@")
    if not password:
        raise ValueError("the password after ':' is empty")
    return (unquote(user) or None), unquote(password)


def _address(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad IPv6 address {item!r}; write [::1]:6379")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.partition(":")
        if ":" in port_text:
            raise ValueError(f"bad host {item!r}; put IPv6 addresses in brackets")
    if not host:
        raise ValueError(f"missing host in {item!r}" if item else "missing host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


def _db(query_db: str | bool | None, path_db: str | None) -> int:
    if query_db is not None and path_db is not None:
        raise ValueError("the database is given both in the path and as ?db=")
    text = path_db if path_db is not None else query_db
    if text is None:
        return 0
    if not isinstance(text, str) or not text.isdigit():
        raise ValueError(f"database must be a number, got {text!r}")
    return int(text)


def _query(text: str, *, tls: bool) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for name, values in parse_qs(text, keep_blank_values=True, strict_parsing=False).items():
        if len(values) > 1:
            raise ValueError(f"query parameter {name!r} is given more than once")
        value = values[0]
        if name == "db":
            options[name] = value
        elif name.startswith("ssl_") and not tls:
            raise ValueError(f"{name} needs a TLS scheme (rediss, rediss+sentinel, rediss+cluster)")
        elif name in _TLS_TEXT_OPTIONS:
            options[name] = value
        elif name == "ssl_cert_reqs":
            if value not in _CERT_REQS:
                raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
            options[name] = value
        elif name == "ssl_check_hostname":
            if value.lower() not in _BOOLEANS:
                raise ValueError(f"ssl_check_hostname must be true or false, got {value!r}")
            options[name] = _BOOLEANS[value.lower()]
        else:
            accepted = ", ".join(("db", "ssl_cert_reqs", "ssl_check_hostname", *_TLS_TEXT_OPTIONS))
            raise ValueError(f"unknown query parameter {name!r}; accepted: {accepted}")
    return options
