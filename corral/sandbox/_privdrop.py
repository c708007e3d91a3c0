"""The privilege-drop shim: runs as root inside the sandbox's namespaces, then becomes CMD.

``corral.sandbox.shim.shim_argv`` runs this file's code (precompiled bytecode, or this source
when the interpreter's bytecode format differs) as ``/usr/bin/python3 -I -S -c <loader> ...
<config json> CMD...``; the code sees ``sys.argv == ["-c", <config json>, CMD...]``. It must
stay standard-library only, import nothing from corral, and import as little as possible: it
is on every sandbox's launch path.

Invariants (any step failing exits 125 before CMD runs; nothing is silently skipped):
- ``no_new_privs`` is set before anything else, so no later exec can gain privileges.
- Landlock is applied while still root (its rule paths are opened as root): writes are allowed
  only beneath ``writable`` and ``scratch`` and on the ``devices`` nodes (those two only where
  they exist); with ``readable_exec`` set, reads and exec are limited too; with ABI >= 6
  abstract unix sockets and signals are scoped to the sandbox's own Landlock domain. No Landlock and
  ``require_landlock`` set: refuse.
- Securebits are locked (no root magic, no keep-caps, no ambient raise), the capability
  bounding set is emptied and ambient caps cleared while CAP_SETPCAP is still held; then
  supplementary groups are cleared and gid/uid set (real, effective, saved), which empties the
  permitted and effective sets; inheritable is cleared last. The result is verified from
  ``/proc/self/status`` before exec.
- Signal dispositions Python itself set to SIG_IGN (SIGPIPE, SIGXFSZ) are restored to default
  so CMD inherits a normal environment.
- CMD not found exits 127, not executable 126, each with one ``corral: <cmd>: ...`` line.
"""

# Only built-in and C modules (``_ctypes``, ``posix``, ``_json``'s scanner, ``_signal``): their
# pure-Python wrappers import more modules on every launch (docs/benchmarks.md).
import _ctypes
import posix as os
import sys

# landlock_create_ruleset / add_rule / restrict_self share these numbers on every architecture
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_TRUNCATE = 1 << 14
ACCESS_FS_IOCTL_DEV = 1 << 15
# every right known to each ABI (index = ABI): 1 -> bits 0..12, 2 adds REFER, 3 TRUNCATE,
# 5 IOCTL_DEV; 4, 6 and 7 add no filesystem rights
FS_RIGHTS_BY_ABI = (0, (1 << 13) - 1, (1 << 14) - 1, (1 << 15) - 1, (1 << 15) - 1)
FS_RIGHTS_ALL = (1 << 16) - 1
READ_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
# rights that make sense on a non-directory; anything else on a file fd is EINVAL
FILE_RIGHTS = READ_RIGHTS & ~ACCESS_FS_READ_DIR | ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE | (
    ACCESS_FS_IOCTL_DEV
)
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# NOROOT | NOROOT_LOCKED | NO_SETUID_FIXUP_LOCKED | KEEP_CAPS_LOCKED | NO_CAP_AMBIENT_RAISE(+LOCKED)
SECUREBITS = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class SetupError(Exception):
    pass


class CLong(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "l"


class CU64(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "Q"


class CI32(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "i"


class CU32(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "I"


class _LibcFunc(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = CLong


class _Libc:
    _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]  # the process: libc is loaded


def libc(name: str, *args: object) -> int:
    """Call a libc function with every integer passed as a C long; -1 leaves errno for
    ``errno_text``."""
    func = _LibcFunc((name, _Libc()))  # type: ignore[arg-type]  # any object with _handle
    result: int = func(*(CLong(a) if isinstance(a, int) else a for a in args))
    return result


def errno_text() -> str:
    return os.strerror(_ctypes.get_errno())


class Config:
    """The validated JSON config; every field is type-checked, unknown keys are refused."""

    KEYS = frozenset({"uid", "gid", "writable", "readable_exec", "devices", "scratch",
                      "scope_abstract_unix",
                      "scope_signals", "no_new_privs", "require_landlock"})

    def __init__(self, raw: object) -> None:
        if not isinstance(raw, dict):
            raise SetupError("config is not a JSON object")
        unknown = set(raw) - self.KEYS
        if unknown:
            raise SetupError(f"unknown config keys {sorted(unknown)}")
        self.uid = _id(raw, "uid")
        self.gid = _id(raw, "gid")
        self.writable = _paths(raw, "writable")
        self.devices = _paths(raw, "devices")
        self.scratch = _paths(raw, "scratch")
        self.readable_exec = _paths(raw, "readable_exec") if raw.get("readable_exec") is not None \
            else None
        self.scope_abstract_unix = _flag(raw, "scope_abstract_unix")
        self.scope_signals = _flag(raw, "scope_signals")
        self.no_new_privs = _flag(raw, "no_new_privs")
        self.require_landlock = _flag(raw, "require_landlock")


def _id(raw: dict[str, object], key: str) -> int:
    value = raw.get(key)
    # never root, never the overflow id (-1 as unsigned means "unchanged" to setresuid)
    if type(value) is not int or not 0 < value < 2**32 - 1:
        raise SetupError(f"invalid sandbox {key} {value!r}")
    return value


def _paths(raw: dict[str, object], key: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(p, str) and p.startswith("/") and "\0" not in p for p in value
    ):
        raise SetupError(f"{key} must be a list of absolute paths")
    return tuple(value)


def _flag(raw: dict[str, object], key: str) -> bool:
    value = raw.get(key, True)
    if type(value) is not bool:
        raise SetupError(f"{key} must be true or false")
    return value


def fs_rights(abi: int) -> int:
    return FS_RIGHTS_BY_ABI[abi] if abi < len(FS_RIGHTS_BY_ABI) else FS_RIGHTS_ALL


def parse_config(text: str) -> object:
    # The C scanner behind the json module, without importing json (whose import pulls in
    # and compiles regular expressions on the launch path).
    try:
        import _json
    except ImportError:  # pragma: no cover - CPython always ships it
        import json

        result: object = json.loads(text)
        return result

    class Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        memo = None

        @staticmethod
        def parse_constant(name: str) -> object:
            raise ValueError(f"unexpected constant {name}")

    scanner = _json.make_scanner(Context())  # type: ignore[arg-type]
    try:
        value, end = scanner(text, 0)
    except StopIteration:
        raise ValueError("config is not valid JSON") from None
    if text[end:].strip():
        raise ValueError("trailing data")
    return value


def landlock(cfg: Config) -> None:
    abi = libc("syscall", SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET if cfg.scope_abstract_unix else 0) | (
        SCOPE_SIGNAL if cfg.scope_signals else 0
    )
    required = cfg.require_landlock
    if abi <= 0:
        if required:
            raise SetupError("Landlock is not available in this kernel (needs Linux 5.13+ with "
                             "landlock in the lsm= list); refusing to run without it")
        return
    if scoped and abi < 6:
        if required:
            raise SetupError(f"Landlock ABI {abi} cannot scope abstract unix sockets and signals "
                             "(needs ABI 6, Linux 6.12); refusing to run without it")
        scoped = 0

    rights = fs_rights(abi)
    readable = cfg.readable_exec
    handled = rights if readable is not None else rights & ~READ_RIGHTS

    class RulesetAttr(_ctypes.Structure):
        _fields_ = (("fs", CU64), ("net", CU64), ("scoped", CU64))

    class PathBeneath(_ctypes.Structure):
        _pack_ = 1
        _fields_ = (("allowed", CU64), ("fd", CI32))

    attr = RulesetAttr(handled, 0, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc("syscall", SYS_LANDLOCK_CREATE_RULESET, _ctypes.byref(attr), size, 0)
    if ruleset < 0:
        raise SetupError(f"landlock_create_ruleset: {errno_text()}")
    try:
        grants = [(p, handled, True) for p in cfg.writable]
        grants += [(p, handled & (READ_RIGHTS | FILE_RIGHTS), False) for p in cfg.devices]
        grants += [(p, handled, False) for p in cfg.scratch]
        grants += [(p, handled & READ_RIGHTS, True) for p in readable or ()]
        for path, allowed, must_exist in grants:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                if must_exist:
                    raise SetupError(f"Landlock: {path} does not exist") from None
                continue
            try:
                if os.fstat(fd).st_mode & 0o170000 != 0o040000:  # not a directory
                    allowed &= FILE_RIGHTS
                rule = PathBeneath(allowed, fd)
                if allowed and libc("syscall", SYS_LANDLOCK_ADD_RULE, ruleset,
                                    LANDLOCK_RULE_PATH_BENEATH, _ctypes.byref(rule), 0) != 0:
                    raise SetupError(f"landlock_add_rule {path}: {errno_text()}")
            finally:
                os.close(fd)
        if libc("syscall", SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise SetupError(f"landlock_restrict_self: {errno_text()}")
    finally:
        os.close(ruleset)


def drop_privileges(cfg: Config, last_cap: int) -> None:
    def prctl(*args: int) -> int:
        return libc("prctl", *args)

    def check(res: int, what: str) -> None:
        if res != 0:
            raise SetupError(f"{what}: {errno_text()}")

    check(prctl(PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0), "locking securebits")
    for cap in range(last_cap + 1):
        check(prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    check(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient caps")
    uid, gid = cfg.uid, cfg.gid
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)

    class Header(_ctypes.Structure):
        _fields_ = (("version", CU32), ("pid", CI32))

    data = (CU32 * 6)()  # two {effective, permitted, inheritable}, all zero
    check(libc("capset", _ctypes.byref(Header(LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")


def verify(cfg: Config, status_fd: int) -> None:
    want = {"CapInh": "0000000000000000", "CapPrm": "0000000000000000",
            "CapEff": "0000000000000000", "CapBnd": "0000000000000000",
            "CapAmb": "0000000000000000", "Groups": ""}
    if cfg.no_new_privs:
        want["NoNewPrivs"] = "1"
    uid, gid = str(cfg.uid), str(cfg.gid)
    want["Uid"] = "\t".join([uid] * 4)
    want["Gid"] = "\t".join([gid] * 4)
    # opened before Landlock (which may not let us read /proc now); read now, so current
    with open(status_fd, closefd=False) as f:
        have = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    for key, value in want.items():
        if have.get(key, "").strip() != value:
            raise SetupError(f"privilege drop did not take: {key} is {have.get(key)!r}")


def _exec_path() -> list[str]:
    # os.get_exec_path() without os: PATH from the environment, the libc default without one
    raw = os.environ.get(b"PATH")
    path = raw.decode(sys.getfilesystemencoding(), "surrogateescape") if raw is not None \
        else "/bin:/usr/bin"
    return path.split(":")


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def execute(argv: list[str]) -> None:
    import _signal  # the C module: ``signal`` imports enum

    for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(signum, _signal.SIG_DFL)
    # A PATH search like the shell's: a directory we may not search or that lacks the file is
    # skipped (os.execvp would report its EACCES as the result); a file that exists but cannot
    # be executed is remembered and reported if nothing later on PATH works.
    name = argv[0]
    candidates = [name] if "/" in name else [f"{d or '.'}/{name}" for d in _exec_path()]
    failure: OSError | None = None
    for path in candidates:
        try:
            os.execv(path, argv)
        except OSError as exc:
            if failure is None and (
                exc.errno not in (2, 13, 20) or (exc.errno == 13 and _exists(path))
            ):  # anything but ENOENT/ENOTDIR and EACCES from the directory walk
                failure = exc
    if failure is None:
        sys.stderr.write(f"corral: {name}: command not found\n")
        os._exit(127)
    sys.stderr.write(f"corral: {name}: cannot execute: {failure.strerror}\n")
    os._exit(126)


def main() -> None:
    if len(sys.argv) < 3:
        sys.stderr.write("corral: sandbox setup failed: shim needs a config and a command\n")
        os._exit(125)
    try:
        cfg = Config(parse_config(sys.argv[1]))
        if cfg.no_new_privs and libc("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SetupError(f"no_new_privs: {errno_text()}")
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            last_cap = int(f.read())
        status_fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        landlock(cfg)
        drop_privileges(cfg, last_cap)
        verify(cfg, status_fd)
        os.close(status_fd)
    except (SetupError, OSError, ValueError) as exc:
        sys.stderr.write(f"corral: sandbox setup failed: {exc}\n")
        sys.stderr.flush()
        os._exit(125)
    execute(sys.argv[2:])


if __name__ == "__main__":
    main()
