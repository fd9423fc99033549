"""The Python tool: real code in a contained child. Each escape, bomb and runaway is tried for
real and must end fast, as a clear error result, with the machine untouched."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import pytest

from twofiles.tools.python import Limits, PythonSandbox, run_python

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
def seccomp(guards) -> None:
    # without the filter, the tests below would really start processes: skip rather than risk it
    if guards["processes"] != "seccomp":
        pytest.skip(f"no seccomp filter here: {guards['processes']}")


def run(code: str, tmp_path, limits: Limits = FAST, **kw):
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
    if os.uname().machine in ("x86_64", "aarch64"):
        assert (
            guards["processes"] == "seccomp"
        )  # containers allow it too; network namespaces may need root


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
