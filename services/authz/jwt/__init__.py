"""The JWT layer: what Envoy's ``jwt_authn`` filter does for an Istio RequestAuthentication.

``rules`` holds the compiled form of one ``jwtRule``; ``tokens`` finds tokens in a
request the way Envoy's extractor does; ``verify`` parses and checks one token with
jwt_verify_lib's order and status strings (no I/O); ``keys`` supplies JWKS (inline or
fetched); ``authenticate`` ties them together for the authz service and caches
verified tokens.
"""
