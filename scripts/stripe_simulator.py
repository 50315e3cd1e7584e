"""The demo's Stripe simulator: localstripe, with its state its own and on loopback only.

    python scripts/stripe_simulator.py --port 8420 --demo-id TOKEN

localstripe (1.15) pickles its whole state to the fixed path /tmp/localstripe.pickle after every
change and, without --from-scratch, loads that file at start; the path ignores TMPDIR, HOME and
the working directory. Any other localstripe on the machine (a test run, another project) writes
the same file, so a demo reading it crashed with EOFError or inherited strangers' customers. This
launcher starts localstripe's own aiohttp application with an empty store that is never loaded
from nor written to that file: nothing else on the machine can change this simulator, and it
changes nothing of theirs. Its state lives as long as the process; `portal seed-demo` recreates
what the demo needs on every start.

`GET /_config/portal-demo` answers the `--demo-id` it was started with, so `make demo` can tell
its own simulator from anything else listening on the port.
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web
from localstripe import resources, server


def _keep_in_memory(_store: resources.Store) -> None:
    """Stands in for Store.dump_to_disk: the shared pickle file is never written."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--demo-id", default="", help="Answered at GET /_config/portal-demo.")
    args = parser.parse_args()

    # NOTE: patched on the class, so the store's __setitem__/__delitem__ and localstripe's
    # save-after-every-write middleware all stop writing /tmp/localstripe.pickle.
    resources.Store.dump_to_disk = _keep_in_memory  # type: ignore[method-assign]
    resources.store.clear()

    async def who_am_i(_request: web.Request) -> web.Response:
        return web.json_response({"demo_id": args.demo_id, "state": "in memory"})

    # NOTE: under /_config/ because localstripe's auth middleware lets that prefix through.
    server.app.router.add_get("/_config/portal-demo", who_am_i)

    access = logging.getLogger("aiohttp.access")
    access.setLevel(logging.INFO)
    access.addHandler(logging.StreamHandler())
    access.propagate = False
    logging.basicConfig(level=logging.WARNING)
    web.run_app(
        server.app,
        host=args.host,
        port=args.port,
        access_log=access,
        print=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main()
