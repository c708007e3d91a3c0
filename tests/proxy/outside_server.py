"""A test "outside host": HTTPS and HTTP servers run inside a test network namespace.

Routes: /echo (JSON of method, path, headers, body length; ``headers_hex`` has the header
values hex-encoded, which the proxy's secret scrubber does not recognise, so a test can see what
was really received), /reflect?mode=... (request headers reflected into response headers and
body, see ``_reflect``), /sse (three events, 0.4 s apart), /redirect?to=URL (302),
/big?n=BYTES, /sink (reads the body without keeping it; answers its length and sha256),
/git/... (git http-backend over CGI).
Run: python outside_server.py CERT KEY GIT_ROOT (binds 0.0.0.0:443 TLS and 0.0.0.0:80 plain).
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GIT_ROOT = ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return out
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _sink(self) -> None:
        """Count and hash the body as it comes (a test's huge upload never sits here)."""
        import hashlib

        digest, total = hashlib.sha256(), 0

        def take(n: int) -> None:
            nonlocal total
            while n:
                piece = self.rfile.read(min(n, 1 << 20))
                if not piece:
                    raise ConnectionError("body cut short")
                digest.update(piece)
                total += len(piece)
                n -= len(piece)

        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                take(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        else:
            take(int(self.headers.get("Content-Length") or 0))
        self._send(200, json.dumps({"length": total, "sha256": digest.hexdigest()}).encode())

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/git/"):
            return self._git(url.path[len("/git") :], url.query)
        if url.path == "/sink":
            return self._sink()
        if url.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            # Switch protocols, then echo lines upper-cased until "bye" (enough to prove the
            # proxy passes an upgraded connection through both ways).
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            import base64
            import hashlib

            # RFC 6455's accept value: the proxy refuses a 101 without the right one.
            key = self.headers.get("Sec-WebSocket-Key", "").encode()
            guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(hashlib.sha1(key + guid).digest()).decode()
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            while line := self.rfile.readline():
                self.wfile.write(line.upper())
                self.wfile.flush()
                if line.strip() == b"bye":
                    break
            self.close_connection = True
            return None
        body = self._body()
        if url.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"data: {i} {time.time()}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.4)
            self.wfile.write(b"0\r\n\r\n")
            return None
        if url.path == "/reflect":
            return self._reflect(parse_qs(url.query).get("mode", ["plain"])[0])
        if url.path == "/redirect":
            to = parse_qs(url.query)["to"][0]
            self.send_response(302)
            self.send_header("Location", to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if url.path == "/big":
            n = int(parse_qs(url.query)["n"][0])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"x" * 65536
            while n > 0:
                self.wfile.write(block[: min(n, len(block))])
                n -= len(block)
            return None
        echo = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "headers_hex": [[k, v.encode("latin-1").hex()] for k, v in self.headers.items()],
            "body_len": len(body),
            "tls": isinstance(self.connection, ssl.SSLSocket),
        }
        return self._send(200, json.dumps(echo).encode())

    def _reflect(self, mode: str) -> None:
        """A debug endpoint that leaks: every request header back as ``X-Echo-<name>`` and as
        ``name: value`` lines of the body. Modes: plain (Content-Length), chunked (a chunk per
        line), split (1-3 byte chunks, flushed apart, so a value straddles chunk and TLS record
        boundaries), gzip (compressed whatever the request accepts), deflate, br (labelled
        br: undecodable by the proxy), reason (the Authorization value in the reason phrase)."""
        lines = [f"{k}: {v}\n".encode("latin-1") for k, v in self.headers.items()]
        body = b"".join(lines)
        reason = self.headers.get("Authorization", "OK") if mode == "reason" else "OK"
        self.send_response(200, reason)
        for k, v in self.headers.items():
            self.send_header(f"X-Echo-{k}", v)
        self.send_header("Content-Type", "text/plain")
        if mode in ("chunked", "split"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if mode == "split":
                pieces, i = [], 0
                while i < len(body):
                    step = 1 + i % 3
                    pieces.append(body[i : i + step])
                    i += step
            else:
                pieces = lines
            for piece in pieces:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                if mode == "split":
                    time.sleep(0.0005)
            self.wfile.write(b"0\r\n\r\n")
            return
        if mode in ("gzip", "deflate", "br"):
            body = {"gzip": gzip.compress, "deflate": zlib.compress,
                    "br": lambda b: b"\x8b\x00\x80" + b}[mode](body)
            self.send_header("Content-Encoding", mode)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _git(self, path_info: str, query: str) -> None:
        body = self._body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": GIT_ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "10.250.0.1",
        }
        out = subprocess.run(
            ["/usr/lib/git-core/git-http-backend"], input=body, env=env, capture_output=True
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        headers = http.client.parse_headers(io.BytesIO(head + b"\r\n\r\n"))
        status = int((headers.get("Status") or "200").split()[0])
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("status", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_TRACE = do_HEAD = do_PATCH = _route


def main() -> None:
    global GIT_ROOT
    cert, key, GIT_ROOT = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls = ThreadingHTTPServer(("0.0.0.0", 443), Handler)
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    plain = ThreadingHTTPServer(("0.0.0.0", 80), Handler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    print("ready", flush=True)
    tls.serve_forever()


if __name__ == "__main__":
    main()
