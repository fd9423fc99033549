"""The sandboxed side of the Python tool: run as `python -I -u _python_child.py CONFIG_JSON`
with the code on stdin and the run's scratch directory as cwd. Never imported by twofiles.

It locks itself down, in this order, before the code runs:
1. resource limits (CPU seconds, address space, file size, open files, no core dumps);
2. a new network namespace (unshare(CLONE_NEWNET); as a non-root user, inside a new user
   namespace that maps the user to itself): the process sees only a loopback that is down;
3. a seccomp filter (x86_64 and aarch64): no exec, fork, signals to other processes, sockets,
   ptrace, raising limits, mounts or namespaces. The filter is the hard boundary for processes:
   RLIMIT_NPROC is not enforced for root, and `_posixsubprocess.fork_exec` raises no audit
   event, so the audit hook alone cannot stop a fork bomb;
4. an audit hook (PEP 578) that refuses files outside the scratch directory (read-only access to
   the Python installation, for imports), ctypes, sockets, process creation and signals, and
   tampering with itself. Every value the hook uses is bound as a default argument: nothing it
   relies on can be monkeypatched from Python, and rebinding a function's defaults or code is
   itself refused. The hook works at the level of Python; the filter, the namespace, the limits
   and the parent's process-group kill do not depend on it.

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
    for res, value in (
        (
            resource.RLIMIT_CPU,
            (cfg["cpu_seconds"], cfg["cpu_seconds"] + 1),
        ),  # soft -> SIGXCPU, hard -> SIGKILL
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"])),
        (resource.RLIMIT_NOFILE, (cfg["open_files"], cfg["open_files"])),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(res, value)


def isolate_network(libc):
    """'namespace' when the process now has a network of its own (nothing reachable), else why not."""
    if not sys.platform.startswith("linux"):
        return "unavailable (not Linux)"
    CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
    if libc.unshare(CLONE_NEWNET) == 0:
        return "namespace"
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return "unavailable (errno %d)" % __import__("ctypes").get_errno()
    try:  # map ourselves to ourselves so the scratch directory stays writable
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", "%d %d 1" % (uid, uid)),
            ("gid_map", "%d %d 1" % (gid, gid)),
        ):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
    except OSError:
        pass
    return "user+network namespace"


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
    LD, JEQ, JGE, JSET, RET = (
        0x20,
        0x15,
        0x35,
        0x45,
        0x06,
    )  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..., BPF_RET|K
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
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return "unavailable (no_new_privs failed)"
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        return "unavailable (errno %d)" % ctypes.get_errno()
    return "seccomp"


def read_roots():
    """Directories the code may read (for imports): the interpreter's sys.path, resolved."""
    roots = set()
    for p in sys.path:
        if p and os.path.exists(p):
            real = os.path.realpath(p)
            if real.count("/") >= 2:  # never a whole top-level directory such as /usr
                roots.add(real)
    return tuple(sorted(roots))


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
            if flags & _write:
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


def main():
    cfg = json.loads(sys.argv[1])
    code = sys.stdin.read()
    sys.stdin.close()
    os.makedirs(cfg["tmp_dir"], exist_ok=True)
    roots = read_roots()
    set_limits(cfg)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    status = {"network": isolate_network(libc), "processes": seccomp_filter(libc, ctypes)}
    if cfg.get("report_status"):
        print("[sandbox] " + json.dumps(status), file=sys.stderr)
    import traceback  # before the hook, so reporting an error never needs a new import

    install_hook(os.getcwd(), roots)
    del libc
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
