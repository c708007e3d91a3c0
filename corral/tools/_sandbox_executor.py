"""The resident executor: runs INSIDE the sandbox, one per sandbox, reused across tool calls.

Started as ``/usr/bin/python3 -I -S -c <this source> <workspace root>`` as the sandbox user, so it
must stay stdlib-only and import nothing from corral. It reads JSON-lines requests on stdin
(``{"id": N, "op": ..., ...}``), handles each in its own thread, and writes JSON-lines
responses on stdout: zero or more ``{"id": N, "progress": {...}}`` then exactly one
``{"id": N, "ok": true, "result": {...}}`` or ``{"id": N, "ok": false, "error": ..., "kind": ...}``.

Invariants:
- Nothing a request carries is ever handed to a shell except ``exec``'s command, which is the
  shell command by definition; glob and grep patterns are argv data or Python arguments.
- Paths are resolved against the workspace root; a path inside it that resolves (symlinks)
  outside is refused; a path outside is readable only when the host says the read was
  approved (``outside_ok``), and never writable through these tools.
- Outputs are capped; a capped output says so with a marker and the full size.
- The sandbox (uid, mounts, Landlock, seccomp, proxy) is the security boundary; these checks
  are the tools' policy on top of it, not a replacement for it.
"""

from __future__ import annotations

import contextlib
import glob as globmod
import http.client
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import IO, Any
from urllib.parse import urlsplit

Req = dict[str, Any]
Res = dict[str, Any]

ROOT = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else "/workspace")
OUT_LOCK = threading.Lock()
MARK = "\n[... truncated by corral: {shown} of {total} bytes shown ...]\n"


class ToolError(Exception):
    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def send(obj: Res) -> None:
    line = json.dumps(obj, ensure_ascii=False) + "\n"
    with OUT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def inside(path: str) -> bool:
    return path == ROOT or path.startswith(ROOT.rstrip("/") + "/")


def resolve(path: Any, write: bool, outside_ok: bool = False) -> str:
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ToolError("path must be a non-empty string")
    lexical = os.path.normpath(os.path.join(ROOT, path))
    real = os.path.realpath(lexical)
    if inside(lexical):
        if not inside(real):
            raise ToolError(f"{path}: a symlink leads outside the workspace; refused", "symlink")
        return real
    if write:
        raise ToolError(f"{path}: outside the workspace ({ROOT}); tools write only inside it",
                        "outside_write")
    if not outside_ok:
        raise ToolError(f"{path}: outside the workspace; reading it needs approval", "outside")
    return real


def cap(data: bytes, limit: int) -> tuple[str, bool]:
    text = data[:limit].decode("utf-8", "replace")
    if len(data) > limit:
        text += MARK.format(shown=limit, total=len(data))
    return text, len(data) > limit


def op_ping(req: Req) -> Res:
    return {"pid": os.getpid(), "uid": os.getuid(), "root": ROOT}


class _Capture:
    """Both output streams of a command, each kept to ``limit + 1`` bytes, totals counted."""

    def __init__(self, proc: subprocess.Popen[bytes], limit: int) -> None:
        self.limit = limit
        self.bufs = {"stdout": bytearray(), "stderr": bytearray()}
        self.totals = {"stdout": 0, "stderr": 0}
        self.pumps = [threading.Thread(target=self._pump, args=(n, s), daemon=True)
                      for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
        for t in self.pumps:
            t.start()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        while True:
            chunk = stream.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                break
            self.totals[name] += len(chunk)
            room = self.limit + 1 - len(self.bufs[name])
            if room > 0:
                self.bufs[name] += chunk[:room]

    def text(self, name: str) -> str:
        """The stream, capped with a marker that names its full size."""
        self.join()
        text, cut = cap(bytes(self.bufs[name]), self.limit)
        if cut:
            text = text.replace(f"of {self.limit + 1} bytes", f"of {self.totals[name]} bytes")
        return text

    def join(self) -> None:
        for t in self.pumps:
            t.join(timeout=2)


def _wait(proc: subprocess.Popen[bytes], req: Req, start: float, timeout: float,
          capture: _Capture) -> bool:
    """Wait for the command, reporting progress each second; True if it timed out."""
    next_progress = start + 1.0
    while True:
        try:
            proc.wait(timeout=0.05)
            return False
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - start > timeout:
            return True
        if now >= next_progress:
            next_progress = now + 1.0
            send({"id": req["id"], "progress": {
                "elapsed": round(now - start, 1), "total": timeout,
                "message": f"running {now - start:.0f}s, {capture.totals['stdout']} bytes out"}})


def op_exec(req: Req) -> Res:
    command = req["command"]
    timeout = min(max(float(req.get("timeout") or 120), 0.1), 86400.0)
    limit = int(req.get("max_output") or 65536)
    cwd = resolve(req.get("cwd") or ".", write=False)
    if not os.path.isdir(cwd):
        raise ToolError(f"cwd {req.get('cwd')!r} is not a directory")
    start = time.monotonic()
    proc = subprocess.Popen(
        ["/bin/bash", "--noprofile", "--norc", "-c", command], cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    capture = _Capture(proc, limit)
    timed_out = _wait(proc, req, start, timeout, capture)
    # The command's whole session goes when it ends (background jobs included) or times out.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out, err = capture.text("stdout"), capture.text("stderr")
    code = 124 if timed_out else proc.returncode
    if code < 0:
        code = 128 - code
    return {"exit_code": code, "stdout": out, "stderr": err, "timed_out": timed_out,
            "duration_ms": round((time.monotonic() - start) * 1000, 1)}


def op_read(req: Req) -> Res:
    path = resolve(req["path"], write=False, outside_ok=bool(req.get("outside_ok")))
    offset = max(int(req.get("offset") or 1), 1)
    limit = max(int(req.get("limit") or 2000), 1)
    max_bytes = int(req.get("max_bytes") or 262144)
    # O_NONBLOCK: opening a FIFO must not hang; only regular files are read.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ToolError(f"{req['path']}: not a regular file")
    lines: list[str] = []
    size = 0
    number = 0
    truncated = False
    at_start = True
    with os.fdopen(fd, "rb") as handle:
        while True:
            raw = handle.readline(max_bytes + 1)  # bounded: one huge line cannot exhaust memory
            if not raw:
                break
            if at_start:
                number += 1
            at_start = raw.endswith(b"\n")
            if number < offset:
                continue
            if number >= offset + limit or size + len(raw) > max_bytes:
                if number < offset + limit:  # show what fits of the line that does not
                    lines.append(raw[: max_bytes - size].decode("utf-8", "replace"))
                truncated = True
                break
            size += len(raw)
            lines.append(raw.decode("utf-8", "replace"))
    content = "".join(lines)
    if truncated:
        shown = f"lines {offset}-{number - 1 if number >= offset + limit else number}"
        content += f"\n[... truncated by corral: {shown} shown; use offset/limit ...]\n"
    return {"content": content, "truncated": truncated, "path": path}


def op_write(req: Req) -> Res:
    path = resolve(req["path"], write=True)
    content = req["content"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return {"path": path, "bytes": len(content.encode("utf-8"))}


def op_edit(req: Req) -> Res:
    path = resolve(req["path"], write=True)
    old, new = req["old_string"], req["new_string"]
    if not old:
        raise ToolError("old_string must not be empty")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, encoding="utf-8") as handle:
        text = handle.read()
    count = text.count(old)
    if count == 0:
        raise ToolError(f"{req['path']}: old_string not found")
    if count > 1 and not req.get("replace_all"):
        raise ToolError(f"{req['path']}: old_string occurs {count} times; make it unique "
                        "(add surrounding lines) or set replace_all")
    text = text.replace(old, new) if req.get("replace_all") else text.replace(old, new, 1)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return {"path": path, "replacements": count if req.get("replace_all") else 1}


def op_glob(req: Req) -> Res:
    pattern = req["pattern"]
    if pattern.startswith("/") or ".." in pattern.split("/"):
        raise ToolError("glob pattern must be relative to the search directory, without '..'")
    base = resolve(req.get("path") or ".", write=False, outside_ok=bool(req.get("outside_ok")))
    fence = ROOT if inside(base) else base  # results never leave the searched tree
    limit = int(req.get("limit") or 1000)
    found: list[str] = []
    for rel in globmod.iglob(pattern, root_dir=base, recursive=True):
        full = os.path.join(base, rel)
        real = os.path.realpath(full)
        if not (real == fence or real.startswith(fence.rstrip("/") + "/")):
            continue
        found.append(os.path.relpath(full, ROOT) if fence == ROOT else full)
        if len(found) > limit:
            break
    truncated = len(found) > limit
    return {"matches": sorted(found[:limit]), "truncated": truncated}


def op_grep(req: Req) -> Res:
    base = resolve(req.get("path") or ".", write=False, outside_ok=bool(req.get("outside_ok")))
    argv = ["rg", "--line-number", "--no-heading", "--color=never", "--with-filename"]
    if req.get("ignore_case"):
        argv.append("-i")
    if req.get("fixed_strings"):
        argv.append("-F")
    if req.get("files_only"):
        argv.append("-l")
    for g in req.get("glob") or []:
        argv += ["-g", g]
    if req.get("context"):
        argv += ["-C", str(int(req["context"]))]
    argv += ["-e", req["pattern"], "--", os.path.relpath(base, ROOT) if inside(base) else base]
    limit = int(req.get("max_output") or 65536)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=float(req.get("timeout") or 60))
    if done.returncode not in (0, 1):
        raise ToolError("rg: " + done.stderr.decode("utf-8", "replace").strip())
    out, cut = cap(done.stdout, limit)
    return {"output": out, "matched": done.returncode == 0, "truncated": cut}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class TunnelRefused(OSError):
    """The proxy answered the CONNECT with something other than 200: its whole response."""

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"the proxy refused the tunnel: {status} {reason}")
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


class _TunnelConnection(http.client.HTTPSConnection):
    """HTTPS through the proxy with a CONNECT of our own. http.client's tunnel raises
    "Tunnel connection failed: 403" and drops the refusal's body, which is where the proxy
    says which rule denied the connection and what to change: the agent needs that text."""

    def __init__(self, host: str, *, proxy: tuple[str, int], **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._proxy = proxy
        self._tls = ssl.create_default_context()  # SSL_CERT_FILE: the sandbox CA

    def connect(self) -> None:
        sock = socket.create_connection(self._proxy, self.timeout)
        try:
            name = f"[{self.host}]" if ":" in self.host else self.host
            target = f"{name}:{self.port}".encode("idna")
            sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
            head = http.client.HTTPResponse(sock, method="CONNECT")
            head.begin()
            if head.status != 200:
                body = head.read(262145) if head.length is not None else b""
                raise TunnelRefused(head.status, head.reason, dict(head.headers.items()), body)
            # A 200 to CONNECT has no body and the proxy sends nothing before the ClientHello,
            # so the response's reader holds no bytes that belong to TLS.
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class _TunnelHandler(urllib.request.HTTPSHandler):
    def __init__(self, proxy: tuple[str, int]) -> None:
        super().__init__()
        self._proxy = proxy

    def https_open(self, req: urllib.request.Request) -> Any:
        proxy = self._proxy

        def connection(host: str, /, **kwargs: Any) -> http.client.HTTPConnection:
            return _TunnelConnection(host, proxy=proxy, **kwargs)

        return self.do_open(connection, req)


def _opener(url: str) -> urllib.request.OpenerDirector:
    proxies = urllib.request.getproxies()
    https = proxies.get("https")
    host = urlsplit(url).hostname or ""
    if not https or not url.startswith("https://") or urllib.request.proxy_bypass(host):
        return urllib.request.build_opener(urllib.request.ProxyHandler())
    parts = urlsplit(https if "://" in https else "http://" + https)
    rest = {k: v for k, v in proxies.items() if k != "https"}
    return urllib.request.build_opener(
        urllib.request.ProxyHandler(rest), _TunnelHandler((parts.hostname or "", parts.port or 80)))


def op_fetch(req: Req) -> Res:
    url = req["url"]
    if not url.startswith(("http://", "https://")):
        raise ToolError("fetch takes an http:// or https:// URL")
    limit = int(req.get("max_bytes") or 262144)
    body = req.get("body")
    request = urllib.request.Request(
        url, method=req.get("method") or "GET", headers=req.get("headers") or {},
        data=body.encode("utf-8") if isinstance(body, str) else None)
    try:
        resp = _opener(url).open(request, timeout=float(req.get("timeout") or 30))
        status, reason, headers = resp.status, resp.reason, dict(resp.headers.items())
        data = resp.read(limit + 1)
    except urllib.error.HTTPError as err:
        status, reason, headers = err.code, err.reason, dict(err.headers.items())
        data = err.read(limit + 1)
    except urllib.error.URLError as err:
        if not isinstance(err.reason, TunnelRefused):
            raise ToolError(f"fetch {url}: {err.reason}", "network") from None
        # The proxy's refusal is the answer, as for a plain-HTTP request it denies.
        refused = err.reason
        status, reason, headers = refused.status, refused.reason, refused.headers
        data = refused.body
    except OSError as err:
        raise ToolError(f"fetch {url}: {err}", "network") from None
    text, cut = cap(data, limit)
    return {"status": status, "reason": str(reason), "headers": headers, "body": text,
            "truncated": cut}


OPS: dict[str, Any] = {
    "ping": op_ping, "exec": op_exec, "read": op_read, "write": op_write, "edit": op_edit,
    "glob": op_glob, "grep": op_grep, "fetch": op_fetch}


def handle(req: Req) -> None:
    ident = req.get("id")
    try:
        op = OPS.get(str(req.get("op")))
        if op is None:
            raise ToolError(f"unknown op {req.get('op')!r}")
        send({"id": ident, "ok": True, "result": op(req)})
    except ToolError as err:
        send({"id": ident, "ok": False, "error": str(err), "kind": err.kind})
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as err:
        send({"id": ident, "ok": False, "error": f"{type(err).__name__}: {err}", "kind": "error"})


def main() -> None:
    os.chdir(ROOT)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    send({"id": 0, "ok": True, "result": {"ready": True, "pid": os.getpid()}})
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            send({"id": None, "ok": False, "error": "bad request line", "kind": "protocol"})
            continue
        threading.Thread(target=handle, args=(req,), daemon=True).start()


if __name__ == "__main__":
    main()
