"""What one service's documents mean for another: the catalog's translations.

Istio configures a gateway's HTTP connection manager from meshConfig, which
mixerless reads as an authz document (``MeshConfig`` or the ``istio`` ConfigMap);
the xds service builds listeners from the plain ``ListenerSettings`` made here.
"""

from services.authz.mesh_config import MeshSettings
from services.authz.paths import PathNormalization
from services.xds.build import ListenerSettings, RequestBody

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
