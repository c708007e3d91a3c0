"""One probe script for every escape attempt, run as ``python3 -c PROBE KIND ARGS...``.

Each probe makes exactly one attempt and prints one line: ``ok <detail>`` when the attempt
reached its target, ``err <ERRNO or reason>`` when something stopped it. The same script runs
inside the sandbox and, for positive controls, outside it (or with one layer removed).
"""

PROBE = r'''
import ctypes, errno, os, socket, struct, sys

def err(e):
    name = errno.errorcode.get(getattr(e, "errno", None) or 0, type(e).__name__)
    print("err", name); sys.exit(0)

kind, args = sys.argv[1], sys.argv[2:]
try:
    if kind == "tcp":
        fam = socket.AF_INET6 if ":" in args[0] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
        s.connect((args[0], int(args[1])))
        print("ok", s.recv(64).decode(errors="replace") or "connected")
    elif kind == "udp":
        fam = socket.AF_INET6 if ":" in args[0] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1.5)
        s.sendto(b"probe", (args[0], int(args[1])))
        data, _ = s.recvfrom(64)
        print("ok", data.decode(errors="replace"))
    elif kind == "icmp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); s.settimeout(1.5)
        s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"corral", (args[0], 0))
        data, _ = s.recvfrom(256)
        print("ok", "echo-reply" if data[0] == 0 else data[0])
    elif kind == "raw":
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("ok raw")
    elif kind == "packet":
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); print("ok packet")
    elif kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(3)
        s.connect(args[0] if args[0].startswith("/") else "\0" + args[0])
        print("ok", s.recv(64).decode(errors="replace") or "connected")
    elif kind == "read":
        with open(args[0], "rb") as f:
            data = f.read(4096)
        print("ok", data[:40].decode(errors="replace").replace("\n", " ") if data else "EMPTY")
    elif kind == "list":
        print("ok", " ".join(sorted(os.listdir(args[0]))))
    elif kind == "write":
        with open(args[0], "a") as f:
            f.write("corral-escape\n")
        print("ok written")
    elif kind == "kill":
        os.kill(int(args[0]), int(args[1]) if len(args) > 1 else 0); print("ok signalled")
    elif kind == "ptrace":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.ptrace(16, int(args[0]), None, None) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), "ptrace")
        libc.ptrace(17, int(args[0]), None, None)  # PTRACE_DETACH
        print("ok attached")
    elif kind == "environ":
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if args[0].encode() in f.read():
                            found.append(pid)
                except OSError:
                    pass
        print("ok" if found else "err NOTFOUND", " ".join(found))
    elif kind == "readlink":
        print("ok", os.readlink(args[0]))
    elif kind == "tiocsti":
        import fcntl, termios
        fd = int(args[0]) if args[0].isdigit() else os.open(args[0], os.O_RDWR)
        for ch in args[1].encode():
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([ch]))
        print("ok injected")
    else:
        print("err UNKNOWN-PROBE")
except Exception as e:
    err(e)
'''
