"""CUSTOM action providers: the external authorizers of Istio's ``extensionProviders``.

An AuthorizationPolicy with ``action: CUSTOM`` delegates matching requests to a named
provider, an ``envoyExtAuthzGrpc`` or ``envoyExtAuthzHttp`` entry of meshConfig. In an
Istio mesh, Envoy's ext_authz filter calls that provider; here mixerless does, and
answers the way Envoy's filter would have, so the request sees the same outcome.

* ``config``: the provider settings, parsed and validated as Istio does;
* ``client``: ``ProviderDecision`` and the ``AuthzProviderClient`` protocol, with the
  failure rules both kinds share (``failOpen``, ``statusOnError``, the request body limit);
* ``grpc_provider`` and ``http_provider``: the two clients;
* ``registry``: one client per provider configuration, kept across policy reloads.
"""
