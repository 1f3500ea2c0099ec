"""Ray Serve side of jitgate: ingress app, routing to shards, settings and bootstrap."""
