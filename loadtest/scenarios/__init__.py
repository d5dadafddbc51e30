"""What the load scenarios send and serve: requests, policies, tokens.

``ratelimit`` is ``rls_load.py``'s (ShouldRateLimit), ``authz`` is ``check_load.py``'s
(ext_authz Check); ``inprocess_cost.py`` builds the same requests without gRPC."""
