#!/usr/bin/env python3
"""A stateless shopping-cart backend for tandem's proxy mode (Python standard library only).

It keeps nothing between requests: tandem hands it the session in request headers and takes
changes back from response headers (README, "The backend contract").

    python3 cart.py --port 9001 --name cart1

    GET  /cart                 the cart: {"backend", "user", "items"}
    POST /cart/add?item=NAME   add one item
    POST /login?user=NAME      store the user and renew the session id (against fixation)
    POST /logout               invalidate the session
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PREFIX = "x-tandem-session"


class Cart(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def session(self):
        """The session's attributes, or {} when the request has no session."""
        data = self.headers.get(PREFIX + "-data")
        return json.loads(data) if data else {}

    def answer(self, body, session_headers=None):
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (session_headers or {}).items():
            self.send_header(PREFIX + "-" + name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            return self.answer({"ok": True})
        if url.path != "/cart":
            return self.send_error(404)
        session = self.session()
        self.answer({"backend": NAME, "user": session.get("user"), "items": session.get("items", [])})

    def do_POST(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        session = self.session()
        if url.path == "/cart/add" and query.get("item"):
            items = session.get("items", []) + query["item"]
            # json.dumps escapes non-ASCII as \uXXXX by default: header-safe as tandem needs.
            patch = json.dumps({"items": items})
            return self.answer({"backend": NAME, "items": items}, {"patch": patch})
        if url.path == "/login" and query.get("user"):
            user = query["user"][0]
            patch = json.dumps({"user": user})
            return self.answer({"backend": NAME, "user": user}, {"patch": patch, "command": "renew"})
        if url.path == "/logout":
            return self.answer({"backend": NAME, "user": None}, {"command": "invalidate"})
        self.send_error(404)

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="cart")
    arguments = parser.parse_args()
    NAME = arguments.name
    server = ThreadingHTTPServer(("127.0.0.1", arguments.port), Cart)
    print(f"{NAME} listening on 127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
