"""The WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi …`."""

import gc

from portal import create_app

app = create_app()

# NOTE: what starting made (the modules, the app, Babel's locale data, SQLAlchemy's mappers: some
# 190,000 objects) lives as long as the process, yet every full garbage collection walks all of
# it: ~110 ms on the bench machine, a pause each worker takes every few thousand requests, which
# set the p99 of every page. Frozen, those objects are left out of every collection; what a
# request makes is collected as before (gc.freeze(), Python's own advice for long-lived servers).
gc.freeze()
