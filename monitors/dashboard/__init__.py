"""``flowmesh dashboard``: a live web dashboard over the SQL API.

- ``app.py``: the Starlette application (``create_app``)
- ``access.py``: who may read, and as which role (token, Supabase JWT)
- ``reader.py`` and ``queries.sql``: the named queries, run as the request's identity
- ``api.py``: the JSON API; ``badges.py``: status badges; ``pages.py``: pages and login
- ``live.py``: LISTEN/NOTIFY as Server-Sent Events
- ``server.py``: uvicorn, stopped cleanly; ``command.py``: the CLI command
- ``static/``: the pages and their vendored libraries

Nothing here is imported by the agent.
"""
