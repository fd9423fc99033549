"""The sandboxed side of the Python tool: run as `python -I -u _python_child.py CONFIG_JSON`
with the code on stdin and the run's scratch directory as cwd. Never imported by twofiles.

It locks itself down, in this order, before the code runs:
1. resource limits (CPU seconds, address space, file size, open files, no core dumps);
2. new mount, network and IPC namespaces (unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC);
   as a non-root user, inside a new user namespace that maps the user to itself): the process
   sees only a loopback that is down, no SysV/POSIX IPC objects of the host, and a root of its
   own (`build_view`): an empty read-only tmpfs holding read-only bind mounts of the Python
   installation's import directories, the system library directory, the zoneinfo database,
   /etc/ld.so.cache and four character devices (null, zero, random, urandom), plus the scratch
   directory bound read-write (noexec). Nothing else exists
   for it: no /proc, /sys, /home, /etc, nor the directories around the scratch directory, so
   opening, stat()ing, chmod()ing or linking anything outside fails in the kernel whatever the
   code does (ctypes, sqlite3, readline, raw syscalls). This is what "files are contained" means;
3. a Landlock ruleset (kernel 5.13+; every filesystem right the ABI knows is handled): read and
   write beneath the scratch directory, read beneath the read-only directories above, nothing
   else; TCP bind/connect denied (ABI 4+), abstract unix sockets and signals scoped (ABI 6+).
   A second kernel check, independent of the mount view, on the same boundary;
4. every capability dropped (a root process keeps uid 0 but loses CAP_SYS_ADMIN, DAC override
   and the rest);
5. a seccomp filter (x86_64 and aarch64): no exec, fork, signals to other processes, sockets,
   ptrace, raising limits, mounts, namespaces, links or device nodes. The filter is the hard
   boundary for processes: RLIMIT_NPROC is not enforced for root, and
   `_posixsubprocess.fork_exec` raises no audit event, so the audit hook alone cannot stop a
   fork bomb;
6. an audit hook (PEP 578), a Python-level second layer with clearer messages: it refuses files
   outside the scratch directory (read-only access to the Python installation, for imports),
   ctypes, sockets, process creation and signals, and tampering with itself. Every value the
   hook uses is bound as a default argument: nothing it relies on can be monkeypatched from
   Python, and rebinding a function's defaults or code is itself refused. The kernel layers
   above do not depend on it: sqlite3, readline and os.stat never raise the events it watches.

What it managed is written as JSON to the status pipe (CONFIG_JSON's status_fd), which is closed
before the code runs. When the mount view cannot be built (no mount namespace for this user)
and the config does not allow uncontained files, it stops there and runs nothing.

Then it runs the code as __main__, prints a traceback (without these frames) on an exception,
and saves still-open matplotlib figures as PNGs when the code wrote no PNG itself.
"""

import builtins
import json
import os
import resource
import sys


def set_limits(cfg):
    mem = cfg["memory_bytes"]
    cpu = cfg["cpu_seconds"]
    for res, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # soft -> SIGXCPU, hard -> SIGKILL
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"])),
        (resource.RLIMIT_NOFILE, (cfg["open_files"], cfg["open_files"])),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(res, value)


CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x40000000, 0x10000000
# SysV shared memory, semaphores and message queues, and POSIX message queues, are kept per IPC
# namespace, not in files: without a namespace of its own the code would share the host's
CLONE_NEWIPC = 0x08000000


def enter_namespaces(libc, ctypes, mounts):
    """Unshare the network and IPC (and, with `mounts`, the mount table): (network status, True
    when a private mount namespace was entered, why not otherwise)."""
    if not sys.platform.startswith("linux"):
        return "unavailable (not Linux)", False, "not Linux"
    uid, gid = os.getuid(), os.getgid()
    tries = [CLONE_NEWNET | CLONE_NEWIPC, CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC]
    if mounts:
        tries = [flags | CLONE_NEWNS for flags in tries] + tries
    errors = []
    for flags in tries:
        if libc.unshare(flags) != 0:
            errors.append(os.strerror(ctypes.get_errno()))
            continue
        if flags & CLONE_NEWUSER:  # map ourselves to ourselves so the scratch stays writable
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", "%d %d 1" % (uid, uid)),
                ("gid_map", "%d %d 1" % (gid, gid)),
            ):
                with open("/proc/self/" + name, "w") as f:
                    f.write(text)
        network = "user+network namespace" if flags & CLONE_NEWUSER else "namespace"
        why = "unshare(CLONE_NEWNS): " + errors[0] if errors and not flags & CLONE_NEWNS else ""
        return network, bool(flags & CLONE_NEWNS), why
    return "unavailable (%s)" % errors[-1], False, "unshare: " + errors[0]


def python_roots():
    """The directories imports read: sys.path entries inside the installation (prefix, base
    prefix) or named site-packages, resolved. Not the rest of sys.path (an editable install's
    source tree, say): the code gets the stdlib, numpy and matplotlib, not the host's projects."""
    prefixes = {
        os.path.realpath(p) + "/"
        for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    }
    roots = set()
    for p in sys.path:  # a file on it is a zip of modules (an embedded stdlib, say)
        if not p or not os.path.exists(p):
            continue
        real = os.path.realpath(p)
        inside = any((real + "/").startswith(prefix) for prefix in prefixes)
        if real.count("/") >= 2 and (inside or os.path.basename(real).endswith("-packages")):
            roots.add(real)
    return tuple(sorted(roots))


def system_roots():
    """What else the process needs read-only: the directories of the shared libraries it has
    mapped (extension modules such as _sqlite3 load theirs from the same place) and the
    multiarch ones, the zoneinfo database; and the files: the loader's cache and four devices."""
    import sysconfig

    dirs = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split(None, 5)[-1].strip()
            if path.startswith("/") and ".so" in os.path.basename(path):
                dirs.add(os.path.dirname(os.path.realpath(path)))
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    candidates = ["/lib/" + arch, "/usr/lib/" + arch] if arch else []
    zoneinfo = (sysconfig.get_config_var("TZPATH") or "/usr/share/zoneinfo").split(os.pathsep)
    for d in candidates + zoneinfo:
        if d and os.path.isdir(d):
            dirs.add(os.path.realpath(d))
    files = [f for f in ("/etc/ld.so.cache",) if os.path.isfile(f)]
    devices = [d for d in ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")]
    return tuple(sorted(d for d in dirs if d.count("/") >= 2)), tuple(files), tuple(devices)


# mount(2) flags, and the statvfs(3) bits that report them
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_NOATIME = 1, 2, 4, 8, 32, 1024
MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 2048, 4096, 16384, 1 << 18, 1 << 21
ST_RELATIME, MNT_DETACH = 4096, 2
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


def build_view(libc, ctypes, scratch, read_dirs, read_files, devices):
    """Replace this mount namespace's root with an empty read-only tmpfs holding only what the
    code may see (see the module docstring); cwd is the scratch directory again afterwards.
    Raises OSError when a step fails: the caller then runs nothing."""
    import platform

    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

    def mount(source, target, fstype, flags, data=None):
        enc = [os.fsencode(a) if a is not None else None for a in (source, target, fstype, data)]
        if libc.mount(enc[0], enc[1], enc[2], flags, enc[3]) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "mount %s: %s" % (target, os.strerror(err)))

    def bind(source, target, flags):
        # a bind mount keeps its source's flags; in a user namespace the kernel refuses to drop
        # the locked ones (nosuid, nodev, noexec, ro, atime), so they are carried over
        st = os.statvfs(source).f_flag
        locked = st & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
        locked |= MS_RELATIME if st & ST_RELATIME else 0
        mount(source, target, None, MS_BIND)  # not MS_REC: mounts below the source stay hidden
        mount(None, target, None, MS_BIND | MS_REMOUNT | locked | flags)

    pivot_root = PIVOT_ROOT.get(platform.machine())
    if pivot_root is None:
        raise OSError(0, "no pivot_root number for %s" % platform.machine())
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    # the new root is mounted over the scratch directory itself: a directory known to exist
    # and to be ours; once the tmpfs moves to "/", the old root shows the real one again
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "size=256k,nr_inodes=4096,mode=0755")
    os.mkdir(scratch + "/.oldroot")
    if libc.syscall(pivot_root, os.fsencode(scratch), os.fsencode(scratch + "/.oldroot")) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "pivot_root: " + os.strerror(err))
    os.chdir("/")
    old = "/.oldroot"
    for name in os.listdir(old):  # /lib -> usr/lib and the like: ld.so.cache names /lib paths
        if os.path.islink(old + "/" + name):
            os.symlink(os.readlink(old + "/" + name), "/" + name)
    ro = MS_RDONLY | MS_NOSUID | MS_NODEV
    # parents before children (sorted paths), so a directory inside another one stays visible
    plan = [(d, "dir", ro) for d in read_dirs] + [
        (scratch, "dir", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    ]
    plan += [(f, "file", ro | MS_NOEXEC) for f in read_files]
    plan += [(d, "file", MS_RDONLY | MS_NOSUID | MS_NOEXEC) for d in devices]
    for path, kind, flags in sorted(plan):
        if not os.path.exists(old + path):
            continue
        if kind == "dir":
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        bind(old + path, path, flags)
    if libc.umount2(os.fsencode(old), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "umount old root: " + os.strerror(err))
    os.rmdir(old)
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(scratch)
    return "mount namespace"


# Landlock (Documentation/userspace-api/landlock.rst): rights by the ABI version that added them
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
LL_REMOVE_DIR, LL_REMOVE_FILE, LL_MAKE_DIR, LL_MAKE_REG = 16, 32, 128, 256
LL_ALL_V1 = (1 << 13) - 1  # EXECUTE ... MAKE_SYM
LL_REFER, LL_TRUNCATE, LL_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
LL_NET_TCP = 1 | 2  # BIND_TCP, CONNECT_TCP (ABI 4)
LL_SCOPE = 1 | 2  # ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6)
LL_CREATE_RULESET, LL_ADD_RULE, LL_RESTRICT_SELF = 444, 445, 446  # the same on every arch
LL_RULE_PATH_BENEATH = 1


def landlock(libc, ctypes, scratch, read_dirs, read_files, devices):
    """Restrict this process (and threads it starts later) to the scratch directory for writes
    and to read_dirs/read_files/devices for reads: 'ABI n', or why not."""
    if not sys.platform.startswith("linux"):
        return "unavailable (not Linux)"
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(LL_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return "unavailable (%s)" % os.strerror(ctypes.get_errno())

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    handled = LL_ALL_V1
    handled |= LL_REFER if abi >= 2 else 0
    handled |= LL_TRUNCATE if abi >= 3 else 0
    handled |= LL_IOCTL_DEV if abi >= 5 else 0
    attr = RulesetAttr(handled, LL_NET_TCP if abi >= 4 else 0, LL_SCOPE if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # the struct as that ABI knows it
    fd = libc.syscall(LL_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if fd < 0:
        return "unavailable (create_ruleset: %s)" % os.strerror(ctypes.get_errno())
    read = LL_READ_FILE | LL_READ_DIR | LL_EXECUTE
    write = LL_WRITE_FILE | LL_REMOVE_DIR | LL_REMOVE_FILE | LL_MAKE_DIR | LL_MAKE_REG
    write |= LL_REFER | LL_TRUNCATE  # renames between its own directories; open(..., "w")
    rules = [(scratch, LL_READ_FILE | LL_READ_DIR | write)]
    rules += [(d, read) for d in read_dirs] + [(f, LL_READ_FILE) for f in read_files]
    rules += [
        (d, LL_READ_FILE | (LL_WRITE_FILE | LL_TRUNCATE if d == "/dev/null" else 0))
        for d in devices
    ]
    try:
        for path, allowed in rules:
            try:
                target = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # absent here: nothing to allow
            rule = PathBeneath(allowed & handled, target)
            rc = libc.syscall(LL_ADD_RULE, fd, LL_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
            os.close(target)
            if rc != 0:
                return "unavailable (add_rule %s: %s)" % (path, os.strerror(ctypes.get_errno()))
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return "unavailable (no_new_privs failed)"
        if libc.syscall(LL_RESTRICT_SELF, fd, 0) != 0:
            return "unavailable (restrict_self: %s)" % os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    return "ABI %d" % abi


def drop_capabilities(libc, ctypes):
    """Empty the effective, permitted and inheritable sets: 'dropped', or why not."""
    if not sys.platform.startswith("linux"):
        return "unavailable (not Linux)"

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: 2 words
    if libc.capset(ctypes.byref(header), data) != 0:
        return "unavailable (%s)" % os.strerror(ctypes.get_errno())
    return "dropped"


PR_SET_NO_NEW_PRIVS = 38

# syscall -> (x86_64 number, aarch64 number), from the kernel's unistd headers. None: absent.
DENIED = {
    "socket": (41, 198),
    "socketpair": (53, 199),
    "execve": (59, 221),
    "execveat": (322, 281),
    "fork": (57, None),
    "vfork": (58, None),
    "kill": (62, 129),
    "tkill": (200, 130),
    "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240),
    "pidfd_send_signal": (424, 424),
    "pidfd_open": (434, 434),
    "pidfd_getfd": (438, 438),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "setrlimit": (160, 164),
    "prlimit64": (302, 261),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "reboot": (169, 142),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "mknod": (133, None),
    "mknodat": (259, 33),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "iopl": (172, None),
    "ioperm": (173, None),
    "link": (86, None),
    "linkat": (265, 37),
    "symlink": (88, None),
    "symlinkat": (266, 36),
    "fsopen": (430, 430),
    "fsmount": (432, 432),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "syslog": (103, 116),
    "fsconfig": (431, 431),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
}
CLONE, CLONE3 = (56, 220), (435, 435)
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # AUDIT_ARCH_*


def seccomp_filter(libc, ctypes):
    """Install the filter; 'seccomp' or why not."""
    import platform
    import struct

    machine = platform.machine()
    if not sys.platform.startswith("linux") or machine not in ARCHES:
        return "unavailable (no syscall table for %s)" % machine
    col, audit_arch = ARCHES[machine]
    # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_JMP|JSET|K, BPF_RET|K
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ERRNO | errno
    prog = [
        (LD, 0, 0, 4),
        (JEQ, 1, 0, audit_arch),
        (RET, 0, 0, KILL),
        (LD, 0, 0, 0),
    ]  # other ABIs (i386 on x86_64) die
    if machine == "x86_64":
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, EPERM)]  # the x32 ABI's numbers
    for numbers in DENIED.values():
        if numbers[col] is not None:
            prog += [(JEQ, 0, 1, numbers[col]), (RET, 0, 0, EPERM)]
    # clone3 says "not implemented" so glibc falls back to clone, whose flags BPF can read (clone3
    # passes them in memory): threads (CLONE_THREAD) are allowed, new processes are not.
    prog += [(JEQ, 0, 1, CLONE3[col]), (RET, 0, 0, ENOSYS)]
    prog += [
        (JEQ, 0, 3, CLONE[col]),
        (LD, 0, 0, 16),
        (JSET, 1, 0, 0x00010000),
        (RET, 0, 0, EPERM),
        (RET, 0, 0, ALLOW),
    ]
    raw = b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return "unavailable (no_new_privs failed)"
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        return "unavailable (errno %d)" % ctypes.get_errno()
    return "seccomp"


def install_hook(scratch, roots):
    scratch = os.path.realpath(scratch)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def hook(
        event,
        args,
        _scratch=scratch + "/",
        _roots=tuple(r + "/" for r in roots),
        _devices=frozenset({"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"}),
        _write=write_flags,
        _getcwd=os.getcwd,
        _int=int,
        _str=str,
        _bytes=bytes,
        _isinstance=isinstance,
        _func=type(install_hook),  # noqa: B008  (bound once, before user code can rebind `type`)
        _PermissionError=PermissionError,
        _refused=frozenset(
            {
                "os.system",
                "os.exec",
                "os.fork",
                "os.forkpty",
                "os.posix_spawn",
                "os.spawn",
                "subprocess.Popen",
                "os.kill",
                "os.killpg",
                "signal.pthread_kill",
                "pty.spawn",
                "gc.get_objects",
                "gc.get_referrers",
                "gc.get_referents",
                "resource.setrlimit",
                "resource.prlimit",
                "os.link",
                "os.symlink",
                "os.chroot",
                "webbrowser.open",
                "os.startfile",
                "os.setuid",
                "os.setgid",
                "os.mkfifo",
                "os.mknod",
            }
        ),
        _write_events=frozenset(
            {
                "os.remove",
                "os.rmdir",
                "os.rename",
                "os.mkdir",
                "os.chmod",
                "os.chown",
                "os.truncate",
                "os.utime",
                "os.chflags",
                "os.lchflags",
                "os.lchmod",
                "os.lchown",
                "os.setxattr",
                "os.removexattr",
                "shutil.rmtree",
                "shutil.copyfile",
                "shutil.copymode",
                "shutil.copystat",
                "shutil.copytree",
                "shutil.move",
                "shutil.chown",
                "tempfile.mkstemp",
                "tempfile.mkdtemp",
            }
        ),
        _read_events=frozenset(
            {"os.listdir", "os.scandir", "os.getxattr", "os.listxattr"}
        ),  # os.walk and glob go through scandir
        _code=None,  # this function's own code object (bound below), to recognise itself
    ):
        def absolute(path):
            # join makes an exact str/bytes of a subclass, whose overridden methods could lie
            if _isinstance(path, _bytes):
                path = b"".join([path]).decode("utf-8", "surrogateescape")
            path = "".join([path])
            if not path.startswith("/"):
                path = _getcwd() + "/" + path
            parts = []
            for part in path.split("/"):
                if part == "..":
                    if parts:
                        parts.pop()
                elif part and part != ".":
                    parts.append(part)
            return "/" + "/".join(parts)

        def inside(path, bases):
            p = absolute(path) + "/"
            return any(p.startswith(b) for b in bases)

        def refuse(what):
            raise _PermissionError("sandbox: %s is not allowed" % what)

        if event == "open":
            path, flags = args[0], args[2]
            if _isinstance(path, _int):
                return  # an already-open file descriptor
            if not _isinstance(path, (_str, _bytes)):
                refuse("opening a %s as a path" % type(path).__name__)
            if inside(path, (_scratch,)):
                return
            if flags & _write and absolute(path) != "/dev/null":
                refuse("writing %s (only the working directory is writable)" % absolute(path))
            if absolute(path) in _devices or inside(path, _roots):
                return
            refuse("reading %s (outside the working directory)" % absolute(path))
        elif event in _refused or event.startswith(("socket.", "ctypes.", "_winapi.", "msvcrt.")):
            refuse(event)
        elif event in _write_events or event == "os.chdir":
            for a in args:
                if _isinstance(a, (_str, _bytes)) and not inside(a, (_scratch,)):
                    refuse("%s on %s (outside the working directory)" % (event, absolute(a)))
        elif event in _read_events:
            for a in args[:1]:
                if _isinstance(a, (_str, _bytes)) and not (
                    inside(a, (_scratch,)) or inside(a, _roots)
                ):
                    refuse("%s on %s (outside the working directory)" % (event, absolute(a)))
        elif (
            event == "object.__setattr__"
            and _isinstance(args[0], _func)
            and args[0].__code__ is _code
        ):
            refuse("changing the sandbox's own %s" % args[1])

    # The same code again, with its own code object as the last default: `hook` can then refuse
    # edits to any function running this code without holding a reference that could be swapped.
    bound = type(hook)(
        hook.__code__, hook.__globals__, "hook", hook.__defaults__[:-1] + (hook.__code__,)
    )
    sys.addaudithook(bound)


def save_open_figures():
    """Figures left open by code that never saved one (plt.show() does nothing off-screen)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or any(name.lower().endswith(".png") for name in os.listdir(".")):
        return
    for n in plt.get_fignums():
        plt.figure(n).savefig("figure_%d.png" % n, dpi=100)


def lock_down(cfg, scratch):
    """Steps 1-5 of the module docstring: the status dict, the paths the code may read, and
    whether files are contained."""
    set_limits(cfg)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    guards = set(cfg["file_guards"])
    read_dirs, read_files, devices = (
        system_roots() if sys.platform.startswith("linux") else ((), (), ())
    )
    roots = python_roots()
    read_dirs = tuple(sorted(set(read_dirs) | {r for r in roots if os.path.isdir(r)}))
    read_files += tuple(r for r in roots if not os.path.isdir(r))
    status = {}
    status["network"], in_namespace, why = enter_namespaces(libc, ctypes, "mounts" in guards)
    status["files"] = "off" if "mounts" not in guards else "unavailable (%s)" % why
    if in_namespace:
        try:
            status["files"] = build_view(libc, ctypes, scratch, read_dirs, read_files, devices)
        except OSError as e:
            status["files"] = "unavailable (%s)" % (e.strerror or e)
    status["landlock"] = "off"
    if "landlock" in guards:
        status["landlock"] = landlock(libc, ctypes, scratch, read_dirs, read_files, devices)
    status["capabilities"] = drop_capabilities(libc, ctypes)
    status["processes"] = seccomp_filter(libc, ctypes)
    status["audit_hook"] = "on" if "audit" in guards else "off"
    return status, read_dirs + read_files, status["files"] == "mount namespace"


def main():
    cfg = json.loads(sys.argv[1])
    code = sys.stdin.read()
    sys.stdin.close()
    os.makedirs(cfg["tmp_dir"], exist_ok=True)
    scratch = os.getcwd()
    status, readable, contained = lock_down(cfg, scratch)
    refused = not contained and not cfg["allow_uncontained_files"]
    status["refused"] = refused
    os.write(cfg["status_fd"], json.dumps(status).encode())
    os.close(cfg["status_fd"])
    if refused:
        sys.exit(0)
    import traceback  # before the hook, so reporting an error never needs a new import

    if "audit" in cfg["file_guards"]:
        install_hook(scratch, readable)
    try:
        compiled = compile(code, "<python>", "exec")
    except SyntaxError as e:
        traceback.print_exception(SyntaxError, e, None, limit=0)
        sys.exit(1)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compiled, namespace)
        save_open_figures()
    except SystemExit:
        raise
    except BaseException as e:
        report = traceback.TracebackException(type(e), e, e.__traceback__)
        report.stack = traceback.StackSummary.from_list(
            [f for f in report.stack if f.filename != __file__]
        )
        print("".join(report.format()), end="", file=sys.stderr)
        sys.exit(1)


main()
