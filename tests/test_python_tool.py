"""The Python tool: real code in a contained child. Each escape, bomb and runaway is tried for
real and must end fast, as a clear error result, with the machine untouched."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from twofiles.tools import python as python_tool
from twofiles.tools.python import FILE_GUARDS, UNCONTAINED_ENV, Limits, PythonSandbox, run_python

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the sandbox's kernel guards are Linux's"
)

FAST = Limits(
    wall_seconds=6,
    cpu_seconds=2,
    memory_bytes=512 << 20,
    scratch_bytes=8 << 20,
    scratch_entries=200,
    output_chars=2000,
)

# fork_exec is the C primitive under subprocess; calling it directly raises no audit event, so
# only the seccomp filter stands between it and a new process (23 arguments on Python 3.11)
_FORK_EXEC = (
    "import _posixsubprocess, os\n"
    "def spawn():\n"
    "    r, w = os.pipe()\n"
    "    return _posixsubprocess.fork_exec([b'/bin/sh'], [b'/bin/sh'], True, (), None, None,"
    " -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)\n"
)


@pytest.fixture(scope="module")
def guards(tmp_path_factory) -> dict[str, str]:
    """What the child managed to lock down on this machine ({"network": ..., "processes": ...})."""
    result = run_python("pass", tmp_path_factory.mktemp("status"), FAST, report_status=True)
    return json.loads(result.content.split("[sandbox] ", 1)[1].splitlines()[0])


@pytest.fixture
def contained(guards) -> None:
    # the escape suite needs the kernel's file boundary; where it cannot be built the tool
    # refuses to run at all (test_refuses_to_run_where_files_cannot_be_contained)
    if guards["files"] != "mount namespace":
        pytest.skip(f"no private mount view here: {guards['files']}")


@pytest.fixture
def seccomp(guards) -> None:
    # without the filter, the tests below would really start processes: skip rather than risk it
    if guards["processes"] != "seccomp":
        pytest.skip(f"no seccomp filter here: {guards['processes']}")


def run(code: str, tmp_path, limits: Limits = FAST, **kw):
    # limits, output and the hook's refusals are tested wherever the child can run; the file
    # boundary has tests of its own (the `contained` fixture), and where the kernel cannot
    # build it test_the_guards_report_what_they_did says so when running as root
    kw.setdefault("allow_uncontained_files", True)
    run_dir = tmp_path / "run"
    t0 = time.perf_counter()
    result = run_python(code, run_dir, limits, **kw)
    return result, time.perf_counter() - t0


def test_runs_code_and_returns_its_output(tmp_path):
    result, seconds = run("import math\nprint('sum', sum(range(10)), math.sqrt(2))", tmp_path)
    assert not result.error and result.content.strip() == f"sum 45 {2**0.5}"
    assert seconds < 5


def test_exceptions_come_back_as_tracebacks_of_the_code_only(tmp_path):
    result, _ = run("def f():\n    return 1 / 0\nprint('before')\nf()", tmp_path)
    assert result.error
    assert result.content.startswith("before\nTraceback")
    assert 'File "<python>", line 4' in result.content and "ZeroDivisionError" in result.content
    assert "_python_child" not in result.content
    result, _ = run("def (", tmp_path)
    assert result.error and "SyntaxError" in result.content


def test_the_guards_report_what_they_did(guards):
    assert guards["processes"] == "seccomp" or guards["processes"].startswith("unavailable")
    assert guards["network"].endswith("namespace") or guards["network"].startswith("unavailable")
    assert guards["files"] == "mount namespace" or guards["files"].startswith("unavailable")
    assert guards["landlock"].startswith(("ABI ", "unavailable"))
    assert guards["audit_hook"] == "on" and guards["refused"] is (
        guards["files"] != "mount namespace"
    )
    if os.uname().machine in ("x86_64", "aarch64"):
        # containers allow seccomp too; namespaces need root or unprivileged user namespaces
        assert guards["processes"] == "seccomp"
    if os.geteuid() == 0 and guards["network"] == "namespace":
        assert guards["files"] == "mount namespace" and guards["capabilities"] == "dropped"


@pytest.mark.parametrize(
    "code, refusal",
    [
        ("print(open('/etc/passwd').read())", "reading /etc/passwd"),
        (
            "import pathlib; print(pathlib.Path('/etc/hostname').read_text())",
            "reading /etc/hostname",
        ),
        ("open('{outside}', 'w').write('x')", "writing {outside}"),
        ("open('../escaped.txt', 'w').write('x')", "writing"),
        ("import os; os.remove('{victim}')", "os.remove"),
        ("import shutil; shutil.rmtree('{victim_dir}')", "shutil.rmtree"),
        ("import os; os.listdir('/root')", "os.listdir on /root"),
        ("__import__('os').system('touch {outside}')", "os.system"),
        ("import subprocess; subprocess.run(['touch', '{outside}'])", "subprocess.Popen"),
        ("import os; os.fork()", "os.fork"),
        ("import os; os.kill(os.getppid(), 9)", "os.kill"),
        ("import ctypes; ctypes.CDLL(None).system(b'touch {outside}')", "ctypes.dlopen"),
        ("import ctypes; ctypes.string_at(0, 8)", "ctypes"),
        ("import socket; socket.create_connection(('127.0.0.1', 22), timeout=1)", "socket"),
        (
            "import urllib.request; urllib.request.urlopen('http://example.com', timeout=1)",
            "socket",
        ),
        (
            "import resource; resource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
            "resource.setrlimit",
        ),
        ("import os; os.symlink('/etc/passwd', 'link')", "os.symlink"),
        ("import os; os.chdir('/')", "os.chdir"),
        # tampering with what the guard uses: its helpers are bound at install time
        (
            "import os; os.getcwd = lambda: '/'\nclass S(str):\n    def startswith(self, *a): return True\nopen(S('/etc/passwd')).read()",
            "reading /etc/passwd",
        ),
        ("import gc; [o for o in gc.get_objects() if callable(o)]", "gc.get_objects"),
    ],
)
def test_escapes_are_refused(tmp_path, code, refusal):
    outside = tmp_path / "outside.txt"
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "keep.txt"
    victim.write_text("keep")
    fmt = {"outside": outside, "victim": victim, "victim_dir": victim_dir}
    result, seconds = run(code.format(**fmt), tmp_path)
    assert result.error, result.content
    assert refusal.format(**fmt) in result.content and "not allowed" in result.content
    assert seconds < 5
    assert not outside.exists() and not (tmp_path / "escaped.txt").exists()
    assert victim.read_text() == "keep"


def test_processes_cannot_start_even_without_the_audit_hook(tmp_path, seccomp):
    result, seconds = run(_FORK_EXEC + "spawn()", tmp_path)
    assert result.error and "Operation not permitted" in result.content
    assert seconds < 5


def test_fork_bomb_is_contained(tmp_path, seccomp):
    code = (
        _FORK_EXEC
        + "n = 0\nwhile n < 10000:\n    try:\n        spawn()\n    except OSError:\n        pass\n    n += 1\nprint('tried', n)"
    )
    result, seconds = run(code, tmp_path)
    assert "tried 10000" in result.content  # every attempt failed, nothing was started
    assert seconds < 6


def test_infinite_loop_hits_the_cpu_limit(tmp_path):
    result, seconds = run("while True:\n    pass", tmp_path, Limits(wall_seconds=6, cpu_seconds=1))
    assert result.error and "CPU time limit (1s)" in result.content
    assert seconds < 6


def test_sleeping_forever_hits_the_wall_clock(tmp_path):
    limits = Limits(wall_seconds=1.5, cpu_seconds=2)
    result, seconds = run(
        "import time\nprint('start', flush=True)\ntime.sleep(60)", tmp_path, limits
    )
    assert result.error and "timed out after 1.5s" in result.content and "start" in result.content
    assert seconds < 4


def test_memory_bomb_fails_cleanly(tmp_path):
    result, seconds = run("x = bytearray(8 << 30)", tmp_path)
    assert (
        result.error
        and "MemoryError" in result.content
        and "memory limit (512 MB)" in result.content
    )
    result, _ = run("chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))", tmp_path)
    assert result.error and "MemoryError" in result.content
    assert seconds < 5


def test_huge_output_is_cut(tmp_path):
    result, seconds = run(
        "for i in range(50000):\n    print('line', i)\nprint('the end')", tmp_path
    )
    assert not result.error
    assert len(result.content) < 3000 and "elided" in result.content
    assert result.content.startswith("line 0\n") and result.content.rstrip().endswith("the end")
    assert seconds < 5
    endless = Limits(wall_seconds=2, cpu_seconds=1, output_chars=2000)
    result, seconds = run("while True:\n    print('x' * 10000)", tmp_path, endless)
    assert (
        result.error
        and len(result.content) < 3000
        and ("CPU time limit" in result.content or "timed out" in result.content)
    )
    assert seconds < 4


def test_filling_the_disk_is_stopped(tmp_path):
    # one file past RLIMIT_FSIZE, set below the directory cap so the kernel's limit (not the
    # parent's directory watch, which would race it) is what stops the write
    one_file = dataclasses.replace(FAST, file_bytes=FAST.scratch_bytes // 2)
    result, _ = run("open('big.bin', 'wb').write(b'x' * (64 << 20))", tmp_path, one_file)
    assert result.error and "File too large" in result.content  # RLIMIT_FSIZE
    result, seconds = run(
        "i = 0\nwhile True:\n    open(f'f{i}.txt', 'w').write('x' * 100000)\n    i += 1", tmp_path
    )
    assert result.error and "working directory grew past" in result.content
    assert seconds < 5


def test_files_inside_the_working_directory_are_fine(tmp_path):
    result, _ = run(
        "import os\nos.makedirs('out', exist_ok=True)\nopen('out/a.txt', 'w').write('hi')\nprint(open('out/a.txt').read(), os.listdir('out'))",
        tmp_path,
    )
    assert not result.error and "hi ['a.txt']" in result.content
    assert result.files == [str(tmp_path / "run" / "out" / "a.txt")]


@pytest.mark.slow
def test_matplotlib_plots_come_back_as_pngs(tmp_path):
    sandbox = PythonSandbox(tmp_path / "scratch")
    saved = sandbox.run(
        {
            "code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.savefig('squares.png')\nprint('ok')"
        }
    )
    assert not saved.error, saved.content
    assert [os.path.basename(f) for f in saved.files] == ["squares.png"]
    with open(saved.files[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert list(
        (tmp_path / "scratch" / ".matplotlib-cache").glob("fontlist-*.json")
    )  # the next run starts warm
    left_open = sandbox.run(
        {
            "code": "import numpy as np, matplotlib.pyplot as plt\nplt.plot(np.arange(10) ** 2)\nplt.show()"
        }
    )
    assert not left_open.error, left_open.content
    assert [os.path.basename(f) for f in left_open.files] == ["figure_1.png"]
    assert os.path.dirname(left_open.files[0]) != os.path.dirname(
        saved.files[0]
    )  # a fresh directory per run


def test_private_scratch_is_made_on_first_use_and_removed_with_the_tool():
    sandbox = PythonSandbox()
    assert sandbox._tmp is None  # listing the tools (chat --tools calculator) creates nothing
    result = sandbox.run({"code": "open('x.txt', 'w').write('1')"})
    base = sandbox.scratch_dir
    assert result.files and result.files[0].startswith(str(base)) and base.is_dir()
    del sandbox
    import gc

    gc.collect()
    assert not base.exists()


def test_sandbox_tool_arguments(tmp_path):
    sandbox = PythonSandbox(tmp_path)
    assert sandbox.run({}).error
    assert sandbox.run({"code": 5}).error
    assert sandbox.run({"code": "x = 1"}).content == "(no output)"
    long = PythonSandbox(tmp_path, Limits(code_chars=10)).run({"code": "print('this is too long')"})
    assert long.error and "limit is 10" in long.content


# --- the file boundary, attacked below Python ---------------------------------------------------
# Each attack runs as the model's code would, through run_python, in one batch per sandbox run:
# it prints {"attack", "failed"} when it was stopped and {"attack", "got"} when it was not. The
# kernel layers are attacked with and without the audit hook, so that what stops them is the
# kernel (mount view, Landlock) and not the Python-level hook.

_ATTACKS = r"""
import json, mmap, os, platform, sqlite3
V, S, NEW, DIR, ARENA, FEEDBACK = T["victim"], T["secret"], T["new"], T["dir"], T["arena"], T["feedback"]

def attack(fn):
    try:
        got = fn()
    except BaseException as e:
        print(json.dumps({"attack": fn.__name__, "failed": type(e).__name__ + ": " + str(e)}))
    else:
        print(json.dumps({"attack": fn.__name__, "got": repr(got)[:300]}))
    return fn

# sqlite3 opens files itself: no audit event ever sees these
@attack
def sqlite_creates_a_database():
    sqlite3.connect(NEW).execute("CREATE TABLE t(x)")
@attack
def sqlite_attach():
    con = sqlite3.connect(":memory:")
    con.execute("ATTACH DATABASE ? AS x", (NEW + ".attached",))
    con.execute("CREATE TABLE x.t(a)")
@attack
def sqlite_vacuum_into():
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t(a)")
    con.execute("VACUUM INTO ?", (NEW + ".vacuumed",))
@attack
def sqlite_backup_to_a_file():
    sqlite3.connect(":memory:").backup(sqlite3.connect(NEW + ".backup"))
@attack
def sqlite_uri_reads_the_arena():
    uri = "file:" + ARENA + "?mode=ro"
    return sqlite3.connect(uri, uri=True).execute("SELECT * FROM sqlite_master").fetchall()
@attack
def sqlite_uri_immutable_reads_feedback():
    uri = "file:" + FEEDBACK + "?immutable=1"
    return sqlite3.connect(uri, uri=True).execute("SELECT * FROM sqlite_master").fetchall()
@attack
def sqlite_writes_the_arena():
    sqlite3.connect(ARENA, isolation_level=None).execute("CREATE TABLE pwned(x)")
@attack
def sqlite_writes_feedback():
    sqlite3.connect(FEEDBACK, isolation_level=None).execute("CREATE TABLE pwned(x)")

# readline's history functions raise no audit event
@attack
def readline_writes_history():
    import readline
    readline.add_history("pwned")
    readline.write_history_file(NEW + ".history")
@attack
def readline_appends_history():
    import readline
    readline.add_history("pwned")
    readline.append_history_file(1, V)
@attack
def readline_reads_a_file():
    import readline
    readline.read_history_file(S)
    return readline.get_history_item(1)

# stat is not audited: what exists outside, how big, whose
@attack
def stat_victim():
    return os.stat(V)
@attack
def lstat_secret():
    return os.lstat(S)
@attack
def stat_outside_dir():
    return os.stat(DIR)
@attack
def stat_etc_passwd():
    return os.stat("/etc/passwd")
@attack
def stat_home():
    return os.stat("/root/.cache")

# metadata and names of files outside
@attack
def utime_victim():
    os.utime(V, (0, 0))
@attack
def chmod_victim():
    os.chmod(V, 0o777)
@attack
def chown_victim():
    os.chown(V, 1, 1)
@attack
def setxattr_victim():
    os.setxattr(V, "user.pwned", b"1")
@attack
def truncate_victim():
    os.truncate(V, 0)
@attack
def rename_victim_in():
    os.rename(V, "stolen.txt")
@attack
def replace_victim():
    open("mine.txt", "w").write("pwned")
    os.replace("mine.txt", V)
@attack
def remove_victim():
    os.remove(V)
@attack
def hard_link_victim_in():
    os.link(V, "linked.txt")
    open("linked.txt", "a").write("pwned")
@attack
def symlink_out():
    os.symlink(V, "made_link")
    open("made_link", "a").write("pwned")
@attack
def write_up_from_cwd():
    open("../escaped.txt", "w").write("pwned")
@attack
def write_tmp():
    open(T["tmp_probe"], "w").write("pwned")
@attack
def write_the_python_installation():
    open(T["site_file"], "a")
@attack
def create_in_site_packages():
    open(T["site_new"], "w").write("pwned")
@attack
def utime_the_python_installation():
    st = os.stat(T["site_file"])
    os.utime(T["site_file"], ns=(st.st_atime_ns, st.st_mtime_ns))

# links placed in the run directory and beside it before the run
@attack
def placed_symlink_appends():
    open("to_victim", "a").write("pwned")
@attack
def placed_relative_symlink_reads():
    return open("to_secret_rel").read()
@attack
def placed_dir_symlink_writes():
    open("to_outside_dir/new.txt", "w").write("pwned")
@attack
def hard_link_beside_the_run_dir():
    open("../hardlink_beside", "a").write("pwned")

# mmap: a writable map needs a writable descriptor first
@attack
def mmap_victim():
    with open(V, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        m[:5] = b"pwned"
        m.flush()

# /proc and /dev/fd views of other roots and descriptors
@attack
def proc_self_root():
    return open("/proc/self/root" + S).read()
@attack
def proc_1_root():
    return open("/proc/1/root" + S).read()
@attack
def proc_self_fd():
    return os.listdir("/proc/self/fd")
@attack
def dev_fd():
    return os.listdir("/dev/fd")
@attack
def proc_self_cwd_up():
    open("/proc/self/cwd/../escaped.txt", "w").write("pwned")

# plain reads, for the record
@attack
def read_secret():
    return open(S).read()
@attack
def list_outside_dir():
    return os.listdir(DIR)
@attack
def list_root_for_host_entries():
    # the mount view alone lets "/" be listed: it holds only the skeleton of the view
    shown = sorted(set(os.listdir("/")) & {"proc", "sys", "home", "var", "boot", "opt", "mnt"})
    if not shown:
        raise LookupError("nothing of the host's root")
    return shown

# IPC objects live in the kernel, not in files: the host's SysV shared memory
@attack
def host_shared_memory():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(T["shm_key"], 0, 0)
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget: " + os.strerror(ctypes.get_errno()))
    addr = libc.shmat(shmid, None, 0)
    if addr in (None, 2**64 - 1):
        raise OSError(ctypes.get_errno(), "shmat: " + os.strerror(ctypes.get_errno()))
    return ctypes.string_at(addr, 6)

# raw syscalls: no Python function, no audit event (ctypes itself is refused by the hook)
NR = {"x86_64": dict(openat=257, utimensat=280, fchmodat=268, linkat=265, mount=165,
                     unshare=272, chroot=161, open_by_handle_at=304),
      "aarch64": dict(openat=56, utimensat=88, fchmodat=53, linkat=37, mount=40,
                      unshare=97, chroot=51, open_by_handle_at=265)}[platform.machine()]
AT_FDCWD = -100

def raw(name, *args):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(NR[name], *args)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, name + ": " + os.strerror(err))
    return rc

@attack
def raw_openat_write():
    fd = raw("openat", AT_FDCWD, V.encode(), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"pwned")
@attack
def raw_openat_read():
    return os.read(raw("openat", AT_FDCWD, S.encode(), os.O_RDONLY), 100)
@attack
def raw_openat_create():
    raw("openat", AT_FDCWD, (NEW + ".raw").encode(), os.O_WRONLY | os.O_CREAT, 0o644)
@attack
def raw_utimensat():
    raw("utimensat", AT_FDCWD, V.encode(), None, 0)
@attack
def raw_fchmodat():
    raw("fchmodat", AT_FDCWD, V.encode(), 0o777)
@attack
def raw_linkat():
    raw("linkat", AT_FDCWD, V.encode(), AT_FDCWD, b"raw_link", 0)
@attack
def raw_remount_root_writable():
    raw("mount", None, b"/", None, 32 | 4096, None)  # MS_REMOUNT | MS_BIND, without MS_RDONLY
@attack
def raw_new_user_namespace():
    raw("unshare", 0x10000000 | 0x00020000)
@attack
def raw_chroot():
    raw("chroot", b"/tmp")
@attack
def raw_open_by_handle():
    raw("open_by_handle_at", AT_FDCWD, None, 0)

print("attacks done")
"""

_KERNEL_ONLY = frozenset({"mounts", "landlock"})
_ATTACK_LIMITS = dataclasses.replace(FAST, output_chars=50_000)  # one line per attack


def _snapshot(root) -> dict[str, tuple]:
    """Every entry under root: content, mode, owner, mtime, extended attributes."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body = b""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    body = f.read()
            xattrs = os.listxattr(p, follow_symlinks=False)
            seen[p] = (body, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink, xattrs)
    return seen


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    return ctypes, libc


def _host_shared_memory(content: bytes) -> tuple[int, int]:
    """A SysV shared memory segment of this (the host's) IPC namespace: (key, id)."""
    ctypes, libc = _libc()
    ipc_creat, ipc_excl = 0o1000, 0o2000
    for key in range(0x7F0F0000 + os.getpid() % 1000, 0x7F0F0000 + 2000):
        shm_id = libc.shmget(key, 4096, ipc_creat | ipc_excl | 0o600)
        if shm_id >= 0:
            break
    else:
        raise OSError(ctypes.get_errno(), "shmget")
    addr = libc.shmat(shm_id, None, 0)
    ctypes.memmove(addr, content, len(content))
    libc.shmdt(ctypes.c_void_p(addr))
    return key, shm_id


def _host_shared_memory_remove(shm_id: int) -> None:
    _, libc = _libc()
    libc.shmctl(shm_id, 0, None)  # IPC_RMID


@pytest.fixture
def targets(tmp_path):
    """Files outside the run directory that the attacks go after, and the run directory with
    links to them placed in it and beside it."""
    from twofiles.arena import ArenaStore
    from twofiles.feedback import FeedbackStore

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep")
    (outside / "secret.txt").write_text("s3cret")
    ArenaStore(outside / "arena.sqlite")
    FeedbackStore(outside / "feedback.sqlite")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(outside / "victim.txt", run_dir / "to_victim")
    os.symlink("../outside/secret.txt", run_dir / "to_secret_rel")
    os.symlink(outside, run_dir / "to_outside_dir")
    os.link(outside / "victim.txt", tmp_path / "hardlink_beside")
    import numpy

    site_file = numpy.__file__
    site_new = os.path.join(os.path.dirname(os.path.dirname(site_file)), "twofiles-escape-probe")
    tmp_probe = f"/tmp/twofiles-escape-probe-{os.getpid()}-{id(tmp_path)}"
    names = {
        "victim": str(outside / "victim.txt"),
        "secret": str(outside / "secret.txt"),
        "new": str(outside / "new.sqlite"),
        "dir": str(outside),
        "arena": str(outside / "arena.sqlite"),
        "feedback": str(outside / "feedback.sqlite"),
        "site_file": site_file,
        "site_new": site_new,
        "tmp_probe": tmp_probe,
    }
    site_stat = os.stat(site_file)
    names["shm_key"], shm_id = _host_shared_memory(b"s3cret")
    yield names, run_dir, outside
    try:
        _host_shared_memory_remove(shm_id)
        assert not os.path.exists(site_new) and not os.path.exists(tmp_probe)
        after = os.stat(site_file)
        assert (after.st_mtime_ns, after.st_mode) == (site_stat.st_mtime_ns, site_stat.st_mode)
    finally:
        for leftover in (site_new, tmp_probe):  # only there if an attack got through
            if os.path.exists(leftover):
                os.remove(leftover)


@pytest.mark.parametrize(
    "file_guards",
    [FILE_GUARDS, _KERNEL_ONLY, frozenset({"mounts"})],
    ids=["all layers", "kernel only", "mount view only"],
)
def test_file_escapes_fail_in_the_kernel(tmp_path, targets, contained, file_guards):
    names, run_dir, outside = targets
    before = _snapshot(tmp_path)
    code = f"import json\nT = json.loads({json.dumps(json.dumps(names))})\n" + _ATTACKS
    result = run_python(code, run_dir, _ATTACK_LIMITS, file_guards=file_guards)
    assert "attacks done" in result.content, result.content
    outcomes = [json.loads(line) for line in result.content.splitlines() if line.startswith("{")]
    assert len(outcomes) == _ATTACKS.count("@attack")
    escaped = [o for o in outcomes if "failed" not in o]
    assert not escaped, escaped
    if "audit" not in file_guards:  # the kernel, not the hook, said no
        why = {o["attack"]: o["failed"] for o in outcomes}
        assert "No such file" in why["stat_victim"] and "No such file" in why["read_secret"]
        assert "Read-only file system" in why["write_the_python_installation"]
    after = _snapshot(tmp_path)
    made = {p: v for p, v in after.items() if p not in before}
    assert all(p.startswith(str(run_dir) + os.sep) for p in made), sorted(made)
    assert {p: v for p, v in after.items() if p in before and not p.startswith(str(run_dir))} == {
        p: v for p, v in before.items() if not p.startswith(str(run_dir))
    }
    assert (outside / "victim.txt").read_text() == "keep"
    assert sorted(os.listdir(outside)) == [
        "arena.sqlite",
        "feedback.sqlite",
        "secret.txt",
        "victim.txt",
    ]


def test_hard_links_in_the_run_directory_are_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    run_dir = tmp_path / "run"
    (run_dir / "sub").mkdir(parents=True)
    os.link(victim, run_dir / "sub" / "innocent.txt")
    result, _ = run("open('sub/innocent.txt', 'w').write('pwned')", tmp_path)
    assert result.error and "hard link" in result.content and "not run" in result.content
    assert victim.read_text() == "keep"


def test_refuses_to_run_where_files_cannot_be_contained(tmp_path, monkeypatch):
    # a kernel without mount namespaces is simulated by not asking for the mount view
    no_mounts = frozenset({"landlock", "audit"})
    marker = "open('ran.txt', 'w').write('1')\nprint('ran')"
    result, _ = run(marker, tmp_path, file_guards=no_mounts, allow_uncontained_files=False)
    assert result.error and "cannot keep files inside its directory" in result.content
    assert "allow_uncontained_files=True" in result.content and UNCONTAINED_ENV in result.content
    assert not (tmp_path / "run" / "ran.txt").exists()
    with pytest.warns(RuntimeWarning, match="files NOT contained"):
        result, _ = run(marker, tmp_path, file_guards=no_mounts, allow_uncontained_files=True)
    assert not result.error and "ran" in result.content
    monkeypatch.setenv(UNCONTAINED_ENV, "1")
    assert PythonSandbox(tmp_path).allow_uncontained_files
    monkeypatch.delenv(UNCONTAINED_ENV)
    assert not PythonSandbox(tmp_path).allow_uncontained_files
    assert PythonSandbox(tmp_path, allow_uncontained_files=True).allow_uncontained_files


def test_normal_use_inside_the_view(tmp_path, contained):
    code = (
        "import numpy as np, sqlite3, zoneinfo, tempfile, os\n"
        "np.save('a.npy', np.arange(4))\n"
        "con = sqlite3.connect('notes.db')\n"
        "con.execute('CREATE TABLE t(x)'); con.execute('INSERT INTO t VALUES (7)'); con.commit()\n"
        "os.makedirs('d/e'); os.rename('a.npy', 'd/e/a.npy')\n"
        "with tempfile.NamedTemporaryFile() as f:\n"
        "    f.write(b'x')\n"
        "open('/dev/null', 'w').write('discarded')\n"
        "print(np.load('d/e/a.npy').sum(), con.execute('SELECT x FROM t').fetchone()[0],\n"
        "      zoneinfo.ZoneInfo('Europe/Paris').key, os.cpu_count() >= 1)\n"
    )
    result, seconds = run(code, tmp_path)
    assert not result.error, result.content
    assert "6 7 Europe/Paris True" in result.content
    assert sorted(os.path.relpath(f, tmp_path / "run") for f in result.files) == [
        "d/e/a.npy",
        "notes.db",
    ]
    assert seconds < 5


def test_workdir_keeps_each_runs_files(tmp_path, contained):
    work = tmp_path / "work"
    sandbox = PythonSandbox(work)
    first = sandbox.run({"code": "open('out.txt', 'w').write('one')"})
    second = sandbox.run({"code": "import os\nprint(os.path.exists('../' + %r))" % "x"})
    assert not first.error and not second.error, second.content
    del sandbox
    import gc

    gc.collect()
    [kept] = first.files
    assert kept.startswith(str(work))
    with open(kept) as f:
        assert f.read() == "one"  # still there after the tool is gone
    assert second.content.strip() == "False"  # a run sees its own directory only


_SYSTEM_PYTHON = "/usr/bin/python3"  # readable by every user, unlike a venv under /root


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(_SYSTEM_PYTHON),
    reason="needs root to become another user (setpriv) and a system Python that user can run",
)
def test_the_view_builds_for_an_unprivileged_user():
    # without root the child enters a user namespace first; the file it is kept from is
    # world-writable, so only the sandbox stands between the code and it
    nobody = 65534
    with tempfile.TemporaryDirectory() as base:
        os.chmod(base, 0o755)
        child = os.path.join(base, "child.py")
        shutil.copyfile(python_tool._CHILD, child)
        victim = os.path.join(base, "victim.txt")
        with open(victim, "w") as f:
            f.write("keep")
        os.chmod(victim, 0o666)
        run_dir = os.path.join(base, "run")
        os.mkdir(run_dir)
        os.chown(run_dir, nobody, nobody)
        r, w = os.pipe()
        cfg = dict(
            cpu_seconds=5,
            memory_bytes=1 << 30,
            file_bytes=1 << 20,
            open_files=64,
            tmp_dir=os.path.join(run_dir, ".tmp"),
            status_fd=w,
            allow_uncontained_files=False,
            file_guards=["mounts", "landlock"],
        )
        code = (
            "import os, sqlite3\n"
            "sqlite3.connect('mine.db').execute('CREATE TABLE t(x)')\n"
            f"for attack in (lambda: open({victim!r}, 'a').write('pwned'), "
            f"lambda: os.stat({victim!r}), lambda: os.chmod({victim!r}, 0o777)):\n"
            "    try:\n"
            "        attack()\n"
            "        print('escaped')\n"
            "    except OSError as e:\n"
            "        print('stopped', e.errno)\n"
            "print(os.getuid())\n"
        )
        proc = subprocess.run(
            ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
            + [_SYSTEM_PYTHON, "-I", "-u", child, json.dumps(cfg)],
            input=code.encode(),
            capture_output=True,
            cwd=run_dir,
            pass_fds=(w,),
            timeout=30,
        )
        os.close(w)
        with os.fdopen(r) as f:
            status = json.loads(f.read())
        out = proc.stdout.decode() + proc.stderr.decode()
        assert proc.returncode == 0, out
        assert status["network"] == "user+network namespace", status
        assert status["files"] == "mount namespace" and not status["refused"]
        # EROFS: creating it in the view's read-only root; ENOENT: no such file in the view
        assert out.split() == ["stopped", "30", "stopped", "2", "stopped", "2", str(nobody)], out
        assert os.path.exists(os.path.join(run_dir, "mine.db"))
        with open(victim) as f:
            assert f.read() == "keep"
        assert os.stat(victim).st_mode & 0o777 == 0o666
