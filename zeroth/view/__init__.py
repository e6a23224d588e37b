"""The web app over run ledgers: every run, every rollout, every thought (`zeroth view`,
zeroth.cli.view).

The server (server.py) is stdlib only and reads the ledgers read-only on each request
(queries.py), so a run still writing shows its new steps on the next refresh. The page lives
in static/.
"""
