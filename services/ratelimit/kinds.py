"""The kind the rate limit service reads: envoyproxy/ratelimit's config files.

They have no ``apiVersion`` or ``kind``: a document is recognised by its shape
(``domain``, no ``kind``). Documents compile together, since domains may be merged
across files and limits referenced by name (``replaces``).
"""

from collections.abc import Iterable
from typing import Any

from services.policy.errors import ErrorSink
from services.policy.kinds import Collected, DocumentKind
from services.ratelimit.config import ConfigDocument, compile_config, is_ratelimit_document
from services.ratelimit.model import RateLimitConfig


def _document(body: Any, line: int, sink: ErrorSink) -> ConfigDocument:
    return ConfigDocument(body, line, sink)  # compiled with the whole set, in ``link``


RATELIMIT_CONFIG: DocumentKind[ConfigDocument] = DocumentKind(
    "ratelimit config", frozenset(), _document, recogniser=is_ratelimit_document
)
KINDS = (RATELIMIT_CONFIG,)


def link(
    collected: Collected, derived: Iterable[ConfigDocument], *, merge_domains: bool
) -> RateLimitConfig:
    """Every config document of the set, plus ``derived`` ones (from other services'
    kinds), compiled into one config; problems go to each document's sink."""
    documents = [compiled.value for compiled in collected.of(RATELIMIT_CONFIG)]
    documents.extend(derived)
    return compile_config(documents, merge_domains=merge_domains)
