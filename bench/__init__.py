"""The benchmark harness (`make bench`, never run by the tests): seeds a large dataset on SQLite
and PostgreSQL, loads the customer pages with wrk through gunicorn next to two bare reference
pages, counts SQL statements per page, times PDF renders and statements, and writes
BENCHMARKS.md."""
