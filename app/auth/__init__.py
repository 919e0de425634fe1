"""API keys: format and hashing (keys), storage (store), rate limits, the guard, and the
FastAPI dependencies (dependencies) that routes and the WebSocket handshake use."""
