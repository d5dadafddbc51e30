"""The answer Envoy's HTTP ratelimit filter would give for a ``LimitResult``.

When mixerless enforces quotas inside its own ext_authz Check, it must reply the way
``envoy.filters.http.ratelimit`` replies after asking a rate limit service. This module
restates that filter's logic over the model, with no protobuf in between; the sources
it follows, in envoyproxy/envoy, are:

* ``source/extensions/filters/http/ratelimit/ratelimit_headers.cc``
  (``XRateLimitHeaderUtils::populateHeaders`` and ``convertRateLimitUnit``): the
  ``enable_x_ratelimit_headers: DRAFT_VERSION_03`` headers;
* ``source/extensions/filters/http/ratelimit/ratelimit.cc`` (``Filter::complete``): which
  headers go on which response;
* ``source/extensions/filters/common/ratelimit/ratelimit_impl.cc``
  (``GrpcClientImpl::onSuccess``/``onFailure``): how a ``RateLimitResponse`` or a failed
  call reaches the filter.

A ``DescriptorStatus`` stands for the ``RateLimitResponse.DescriptorStatus`` that
``servicer.response_to_proto`` builds from it: ``current_limit`` only for a limit that
is set and not ``unlimited``, ``limit_remaining`` from ``remaining`` and
``duration_until_reset`` from ``reset_seconds`` (absent, so 0 seconds, when ``None``).
"""

from collections.abc import Sequence

from services.ratelimit.model import Code, DescriptorStatus, LimitResult, RateLimit, Unit

Header = tuple[str, str]

X_RATELIMIT_LIMIT = "x-ratelimit-limit"
X_RATELIMIT_REMAINING = "x-ratelimit-remaining"
X_RATELIMIT_RESET = "x-ratelimit-reset"

# Over limit (and enforced), this header unless ``disable_x_envoy_ratelimited_header``. The
# local reply's status (429) and the one on a failed call (``status_on_error``, 500, no
# header of the filter's own) are answered by the Check: ``services/authz/quota.py``.
X_ENVOY_RATELIMITED = "x-envoy-ratelimited"
X_ENVOY_RATELIMITED_HEADER: Header = (X_ENVOY_RATELIMITED, "true")

# convertRateLimitUnit; a unit missing here (UNKNOWN) has window 0 and is left out of
# the quota policy. MONTH and YEAR are fixed 30 and 365 days, as in envoyproxy/ratelimit.
_WINDOW_SECONDS: dict[Unit, int] = {
    Unit.SECOND: 1,
    Unit.MINUTE: 60,
    Unit.HOUR: 3_600,
    Unit.DAY: 86_400,
    Unit.WEEK: 604_800,
    Unit.MONTH: 2_592_000,
    Unit.YEAR: 31_536_000,
}


def window_seconds(unit: Unit) -> int:
    """The ``w=`` value Envoy writes for ``unit`` (0 for a unit it does not know)."""
    return _WINDOW_SECONDS.get(unit, 0)


def current_limit(status: DescriptorStatus) -> RateLimit | None:
    """The limit Envoy sees in ``current_limit``: none for no limit or an unlimited one."""
    limit = status.limit
    if limit is None or limit.unlimited:
        return None
    return limit


def _enabled(options: Sequence[bool | None], index: int, default: bool) -> bool:
    # A descriptor's x_ratelimit_option: DRAFT_VERSION_03 (True), OFF (False) or
    # UNSPECIFIED (None, also for an index past the list) falling back to the filter's.
    if index >= len(options) or options[index] is None:
        return default
    return options[index] is True


def x_ratelimit_headers(
    result: LimitResult,
    *,
    enabled: bool = True,
    descriptor_options: Sequence[bool | None] = (),
) -> tuple[Header, ...]:
    """``x-ratelimit-limit``, ``-remaining`` and ``-reset`` as Envoy derives them.

    ``enabled`` is the filter's ``enable_x_ratelimit_headers`` (True for
    DRAFT_VERSION_03); ``descriptor_options[i]`` is the ``x_ratelimit_option`` of the
    route rate limit that produced descriptor ``i`` (None: unspecified).

    The statuses with a current limit compete; the first one with the fewest requests
    remaining wins, whatever its code (shadow-mode and global-shadow answers included).
    If the winner's descriptor has the headers off, there are none. Otherwise the
    limit header is the winner's ``requests_per_unit`` followed by
    ``, <limit>;w=<window seconds>[;name="<name>"]`` for every enabled status with a
    current limit and a known unit, in response order; remaining and reset are the
    winner's ``limit_remaining`` and whole seconds of ``duration_until_reset``.
    """
    chosen_index = -1
    chosen: DescriptorStatus | None = None
    for index, status in enumerate(result.statuses):
        if current_limit(status) is None:
            continue
        if chosen is None or status.remaining < chosen.remaining:
            chosen_index, chosen = index, status
    if chosen is None or not _enabled(descriptor_options, chosen_index, enabled):
        return ()
    chosen_limit = current_limit(chosen)
    assert chosen_limit is not None

    policy = []
    for index, status in enumerate(result.statuses):
        limit = current_limit(status)
        if limit is None or not _enabled(descriptor_options, index, enabled):
            continue
        window = window_seconds(limit.unit)
        if window == 0:
            continue
        item = f", {limit.requests_per_unit};w={window}"
        if limit.name:
            item += f';name="{limit.name}"'
        policy.append(item)

    return (
        (X_RATELIMIT_LIMIT, f"{chosen_limit.requests_per_unit}{''.join(policy)}"),
        (X_RATELIMIT_REMAINING, str(chosen.remaining)),
        (X_RATELIMIT_RESET, str(chosen.reset_seconds or 0)),
    )


def is_rate_limited(result: LimitResult) -> bool:
    """Whether the filter treats the answer as over limit (anything else counts as OK)."""
    return result.overall is Code.OVER_LIMIT


def response_headers(
    result: LimitResult,
    *,
    x_ratelimit: bool = True,
    x_envoy_ratelimited: bool = True,
    descriptor_options: Sequence[bool | None] = (),
) -> tuple[Header, ...]:
    """Every header the filter adds to the response, in the order it adds them.

    First the service's ``response_headers_to_add`` (names lower-cased), then, over
    limit, ``x-envoy-ratelimited: true`` (in place of one the service sent), then the
    ``x-ratelimit-*`` headers when ``x_ratelimit`` (``enable_x_ratelimit_headers``).
    They go on the 429 when the request is denied and on the upstream's response when
    it is let through, also when over limit but not enforced. They are appended: a
    header the upstream already sent is kept alongside.
    """
    headers = [(name.lower(), value) for name, value in result.headers]
    if x_envoy_ratelimited and is_rate_limited(result):
        # An inline header in Envoy: one entry, set in place where it already is.
        names = [name for name, _ in headers]
        if X_ENVOY_RATELIMITED in names:
            first = names.index(X_ENVOY_RATELIMITED)
            headers = [
                X_ENVOY_RATELIMITED_HEADER if index == first else header
                for index, header in enumerate(headers)
                if index == first or header[0] != X_ENVOY_RATELIMITED
            ]
        else:
            headers.append(X_ENVOY_RATELIMITED_HEADER)
    headers.extend(
        x_ratelimit_headers(result, enabled=x_ratelimit, descriptor_options=descriptor_options)
    )
    return tuple(headers)
