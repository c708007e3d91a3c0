"""The demo's "outside" API: an HTTPS server in a network namespace the demo creates.

It checks the bearer token it receives against the real one (handed to it by demo.sh) and
answers whether the caller authenticated, never echoing the token back: the point of the demo
is that the agent gets work done without ever seeing the secret.

Run: python3 api_server.py CERT KEY PORT   (token in DEMO_API_TOKEN)
"""

from __future__ import annotations

import hmac
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = os.environ.get("DEMO_API_TOKEN", "")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        sent = self.headers.get("Authorization", "")
        ok = bool(TOKEN) and hmac.compare_digest(sent, f"Bearer {TOKEN}")
        body = json.dumps({
            "path": self.path,
            "authenticated": ok,
            "models": ["demo-small", "demo-large"] if ok else [],
        }).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
