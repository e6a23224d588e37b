"""`zeroth view`: a local web app over run ledgers — every run, every rollout, every thought.

    zeroth view                 # the runs in ./runs
    zeroth view runs/ --port 0  # any free port; prints the URL, serves until Ctrl-C

The app lives in zeroth.view (server, queries, the page in static/).
"""

from __future__ import annotations

import sys

DEFAULT_PORT = 8766


def add_parser(subparsers):
    p = subparsers.add_parser("view", help="browse runs, rollouts and evaluations in a local "
                              "web app")
    p.add_argument("paths", nargs="*", metavar="RUN_DIR_OR_RUNS_FOLDER",
                   help="run directories (runs/<name>) or folders of runs (default: runs/)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; ::1 for IPv6; "
                   "any other address makes the runs readable from the network)")
    return p


def run(ns) -> int:
    from zeroth.view.server import make_server

    server = make_server(ns.paths, ns.host, ns.port)
    if not server.loopback:
        print(f"zeroth view: warning: listening on {ns.host}, not this machine only: anyone "
              "who can reach it on the network can read these runs' ledgers", file=sys.stderr,
              flush=True)
    print(f"zeroth view: {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("zeroth view: stopped", flush=True)
    finally:
        server.server_close()
    return 0
