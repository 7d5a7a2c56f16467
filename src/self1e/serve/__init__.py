"""The HTTP API and the web page (``self1e serve``, ``self1e demo --web``): one FastAPI app."""
