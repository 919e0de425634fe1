"""Prometheus metrics (metrics), JSON logs with request ids (logging), and the ASGI
middleware that ties a request to both (middleware)."""
