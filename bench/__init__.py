"""The benchmark harness: the gateway against an upstream served directly, nginx and Caddy (`make bench`)."""
