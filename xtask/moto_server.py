"""Serves moto's S3 API for the tests, on ONE request thread.

Why one thread: moto checks a conditional write (If-Match / If-None-Match)
and then writes, without a lock. With several request threads two
conditional PUTs on one key can both pass the check, and one update is lost
(measured: 13 of 128 successful conditional PUTs were lost updates with
MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=1). The syncforge S3 backend relies on
conditional writes being atomic, as they are on S3, so the test server must
be atomic too: werkzeug's `run_simple(..., threaded=False)` handles one
request at a time, which makes every check-and-write atomic (16 writers x 25
conditional increments: 400 of 400 kept). About 140 requests/s: keep test
workloads modest.

Started and stopped by `cargo xtask ci` (xtask/src/services/moto.rs).
"""

import argparse

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, app, threaded=False, processes=1, use_reloader=False)


if __name__ == "__main__":
    main()
