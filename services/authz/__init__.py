"""The authz service: Istio RequestAuthentication and AuthorizationPolicy behind Envoy ext_authz."""
