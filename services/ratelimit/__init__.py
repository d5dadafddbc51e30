"""The rate limit service: an Envoy RLS v3 server compatible with envoyproxy/ratelimit configs."""
