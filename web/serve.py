#!/usr/bin/env python3
"""Serves web/dist on 127.0.0.1 (static files, .wasm as application/wasm).

    python3 web/serve.py [--port 8000] [--dir web/dist] [--report-dir DIR]

With --report-dir (the browser test), PUT /report/<name> writes the request body to DIR/<name>:
that is how the test page hands back its results and the checkpoint it trained.
"""
import argparse
import functools
import http.server
import os
import re


class Handler(http.server.SimpleHTTPRequestHandler):
    report_dir = None
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm", ".js": "text/javascript"}

    def do_PUT(self):
        m = re.fullmatch(r"/report/([A-Za-z0-9._-]+)", self.path)
        if not self.report_dir or not m:
            self.send_error(404)
            return
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        with open(os.path.join(self.report_dir, m.group(1)), "wb") as f:
            f.write(body)
        self.send_response(204)
        self.end_headers()

    def end_headers(self):
        # Always the freshly built files.
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, fmt, *args):
        if os.environ.get("WGVAE_SERVE_LOG"):
            super().log_message(fmt, *args)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist"))
    p.add_argument("--report-dir")
    a = p.parse_args()
    if not os.path.exists(os.path.join(a.dir, "index.html")):
        raise SystemExit(f"{a.dir} has no index.html: run web/build.sh first")
    Handler.report_dir = a.report_dir
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), functools.partial(Handler, directory=a.dir))
    print(f"serving {a.dir} on http://127.0.0.1:{srv.server_address[1]}/", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
