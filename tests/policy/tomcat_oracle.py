"""How Apache Tomcat reads a request path, as an independent oracle for the path readings.

Transcribed from Apache Tomcat 10.1, ``org.apache.catalina.connector.CoyoteAdapter``:
``parsePathParameters`` (every ``;`` up to the next ``/`` is a path parameter, removed from the
still-encoded URI), then ``UDecoder.convert`` (percent-decoding; with the default
``EncodedSolidusHandling.REJECT`` an encoded ``/`` or ``\\`` is a 400, and so is a decoded NUL),
then ``normalize`` (a ``\\`` is a 400 unless ``ALLOW_BACKSLASH``; ``//`` collapses; ``/./`` is
removed; ``/../`` removes the previous segment, and above the root it is a 400). Written from
that description on purpose, not from corral's code. ``None`` means Tomcat answers 400.
"""

from __future__ import annotations


def tomcat_path(uri: str) -> str | None:
    uri = uri.split("?", 1)[0]
    # parsePathParameters
    out = []
    i = 0
    while i < len(uri):
        if uri[i] == ";":
            j = uri.find("/", i)
            i = len(uri) if j < 0 else j
            continue
        out.append(uri[i])
        i += 1
    uri = "".join(out)
    # UDecoder.convert
    raw = bytearray()
    i = 0
    while i < len(uri):
        if uri[i] == "%":
            hexpair = uri[i + 1:i + 3]
            if len(hexpair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in hexpair):
                return None
            value = int(hexpair, 16)
            if value in (0x2F, 0x5C, 0):
                return None
            raw.append(value)
            i += 3
        else:
            raw += uri[i].encode()
            i += 1
    path = raw.decode("utf-8", errors="replace")
    # normalize
    if not path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    while "//" in path:
        path = path.replace("//", "/")
    if path.endswith("/.") or path.endswith("/.."):
        path += "/"
    while "/./" in path:
        path = path.replace("/./", "/")
    while True:
        index = path.find("/../")
        if index < 0:
            break
        if index == 0:
            return None
        start = path.rfind("/", 0, index)
        path = path[:start] + path[index + 3:]
    return path
