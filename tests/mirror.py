"""A local mirror for download tests: serves a folder's files from 127.0.0.1, well or badly.

``with serve(folder) as base:`` yields ``http://127.0.0.1:<port>`` while a thread serves ``folder``;
``fault`` makes every answer fail as a real server can:

- ``"truncate"``: announces the whole file (Content-Length) and closes after half of it;
- ``"silent"``: sends the headers and half of the file, then stops answering (until the mirror closes).

Only the loopback interface is bound; the port is picked free by the system.
"""
from __future__ import annotations

import contextlib
import http.server
import threading
from functools import partial
from pathlib import Path
from typing import Iterator

FAULTS = (None, "truncate", "silent")


class _Handler(http.server.SimpleHTTPRequestHandler):
    fault: str | None = None
    release: threading.Event

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if self.fault is None or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if self.fault == "silent":
            self.release.wait()
        self.close_connection = True


@contextlib.contextmanager
def serve(folder: str | Path, fault: str | None = None) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 in a daemon thread; yields the base URL, stops the server on exit."""
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"fault": fault, "release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
