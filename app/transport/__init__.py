"""Everything between the socket and the routes: the uvicorn protocol, the client watch, the
request context (ids, access log, request metrics, the 500 handler), the API-key and body-size
guards, and the direct path for the hottest route."""
