"""Serving: an OpenAI-compatible HTTP server (app.py) and the browser pages on top of it (web.py)."""
