"""Small builders shared by the rate limit unit tests."""

import textwrap
from pathlib import Path

from services.policy.errors import ErrorSink, PolicyError
from services.policy.yamltext import parse_documents
from services.ratelimit.config import ConfigDocument, compile_config
from services.ratelimit.model import DescriptorRequest, LimitRequest, RateLimitConfig

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ratelimit"


def compile_texts(
    *texts: str, merge_domains: bool = False
) -> tuple[RateLimitConfig, list[PolicyError]]:
    """Compile YAML texts (one file each, named f0.yaml, f1.yaml...) and return all errors."""
    sinks = []
    documents = []
    for index, text in enumerate(texts):
        sink = ErrorSink(f"f{index}.yaml")
        sinks.append(sink)
        for document in parse_documents(textwrap.dedent(text)):
            documents.append(ConfigDocument(document.body, document.line, sink))
    config = compile_config(documents, merge_domains=merge_domains)
    return config, [error for sink in sinks for error in sink.errors]


def compiled(*texts: str) -> RateLimitConfig:
    config, errors = compile_texts(*texts)
    assert errors == []
    return config


def request(domain: str, *descriptors: list[tuple[str, str]], hits_addend: int = 0) -> LimitRequest:
    return LimitRequest(
        domain, tuple(DescriptorRequest(tuple(d)) for d in descriptors), hits_addend
    )
