#!/usr/bin/env python3
"""A minimal token endpoint for the benchmark: every POST issues a new access
token (1 h), GET /count says how many were issued. Usage: token_server.py PORT"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

issued = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global issued
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        issued += 1
        body = json.dumps({"access_token": f"bench-at-{issued}", "token_type": "bearer",
                           "expires_in": 3600, "refresh_token": "bench-rt"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        body = str(issued).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
