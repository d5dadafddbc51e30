"""The package layers point down: serving, then the catalog, then the services, then the toolkit.

docs/architecture.md draws the same layers; a module that needs something from a
layer above it is in the wrong layer (or the thing it needs is).
"""

import grimp
import pytest

# Top to bottom. A module may import from its own layer and the layers below it.
SERVING = (
    "cli",
    "serve",
    "one_hop",
    "settings",
    "options",
    "http_server",
    "demo",
    "workers",
    "worker_ports",
    "parent",
    "__main__",
)
CATALOG = ("catalog",)
SERVICES = ("authz", "ratelimit", "xds")  # independent of each other
TOOLKIT = (
    "policy",
    "metrics",
    "metrics_merge",
    "clock",
    "envoy_api",
    "grpc_server",
    "inline",
    "logs",
    "log_throttle",
)


def _qualified(names: tuple[str, ...]) -> set[str]:
    return {f"services.{name}" for name in names}


@pytest.fixture(scope="module", name="graph")
def fixture_graph() -> grimp.ImportGraph:
    return grimp.build_graph("services", cache_dir=None)


def test_every_module_has_a_layer(graph: grimp.ImportGraph) -> None:
    """A new top-level module must be given a layer here (and in the architecture doc)."""
    layered = _qualified(SERVING + CATALOG + SERVICES + TOOLKIT)
    assert graph.find_children("services") == layered


def test_imports_point_down(graph: grimp.ImportGraph) -> None:
    """No module imports from a layer above its own, and no service imports another."""
    layers = (
        grimp.Layer(*_qualified(SERVING), independent=False),
        grimp.Layer(*_qualified(CATALOG)),
        grimp.Layer(*_qualified(SERVICES), independent=True),
        grimp.Layer(*_qualified(TOOLKIT), independent=False),
    )
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    described = sorted(
        f"{dependency.importer} -> {dependency.imported}: "
        + "; ".join(
            " -> ".join([*route.heads, *route.middle, *route.tails]) for route in dependency.routes
        )
        for dependency in illegal
    )
    assert not described, "\n".join(described)


def test_the_toolkit_knows_no_service(graph: grimp.ImportGraph) -> None:
    """services.policy imports nothing from mixerless but itself (the floor of the house)."""
    imported = {
        module
        for child in graph.find_descendants("services.policy") | {"services.policy"}
        for module in graph.find_modules_directly_imported_by(child)
        if module.startswith("services.")
    }
    assert {m for m in imported if not m.startswith("services.policy")} == set()
