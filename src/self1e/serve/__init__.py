"""The HTTP API and the web page (``self1e serve``, ``self1e demo --web``): one FastAPI app (app.py), with
OpenAI's chat-completions format beside it (openai.py), served by uvicorn or, with ``--ray``, on Ray
Serve (ray_app.py, the only module here that imports Ray)."""
