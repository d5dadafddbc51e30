"""The JWT layer: what Envoy's ``jwt_authn`` filter does for an Istio RequestAuthentication.

``rules`` holds the compiled form of one ``jwtRule``; ``plan`` compiles a workload's
rules once per policy set (``compile_jwt_plan`` -> ``JwtPlan``); ``tokens`` finds
tokens in a request the way Envoy's extractor does; ``verify`` parses and checks one
token with jwt_verify_lib's status strings (no I/O); ``jwks`` parses key sets and
``keys`` supplies them (inline or fetched); ``outputs`` is what a verified token hands
on (output headers, dynamic metadata); ``authenticate`` runs the checks in
jwt_verify_lib's order for a plan and a request, caching verified tokens, and answers
with a ``result.JwtResult``.
"""
