"""The OpenAI-compatible HTTP server: a thin layer over the continuous-batching scheduler.

What it owns: `create_app(models, settings)` (app.py: the app, errors, auth, limits; core.py: the
served models and scheduler glue; openai_routes.py: the /v1 routes and streaming),
`ServeSettings` (settings.py: every limit, named, with its default), the request models and the
one validation function (protocol.py). What it leaves to others: batching and sampling
(twofiles.scheduler, twofiles.engine), chat rendering and tool-call parsing (twofiles.chat), the
web pages and their routes (serve/web, attached by create_app when present).

Importing this package imports nothing heavy; `twofiles.serve.app` pulls in FastAPI.
"""

from __future__ import annotations

from twofiles.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
