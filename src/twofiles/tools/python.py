"""The Python tool: run model-written code in a contained child process and read back what it
printed and the files (plots) it made.

What it owns: starting the child (`_python_child.py`, which locks itself down before the code
runs: resource limits, mount and network namespaces, Landlock, no capabilities, a seccomp
filter, an audit hook; see its docstring), the refusal where files cannot be contained,
the wall-clock limit (the child leads its own process group and the whole group is killed),
watching the scratch directory's size, capping the output, and turning every way a run can end
into a ToolResult. What it leaves to others: deciding what code to run (the model, chat).

Each run gets a fresh directory (its cwd, HOME and TMPDIR, and the only place it may write);
files it leaves there (e.g. matplotlib PNGs) come back in ToolResult.files, and figures left open
are saved as figure_N.png. The limits are the `Limits` defaults below.

What the containment is: every boundary is the kernel's, so it holds whatever the code does
(ctypes, raw syscalls, sqlite3 or readline opening files themselves). Files: a private mount
namespace whose root holds only the read-only Python installation and system libraries and the
run's directory (read-write), with Landlock checking the same boundary again; processes,
signals and the network: seccomp, a network namespace, no capabilities; CPU, memory, file sizes
and wall time: rlimits and SIGKILL. An audit hook inside the interpreter adds clearer refusals
but is not relied on. Where the kernel cannot build the file boundary the code is not run,
unless the caller says files may go uncontained (`allow_uncontained_files`).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twofiles.tools.base import ToolResult

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["FILE_GUARDS", "Limits", "PythonSandbox", "run_python"]

_CHILD = Path(__file__).with_name("_python_child.py")

# the file boundary's layers: a private mount view, Landlock, the audit hook (the child's docstring)
FILE_GUARDS = frozenset({"mounts", "landlock", "audit"})
# set to 1 to let the tool run where the kernel cannot contain its files (said on each run)
UNCONTAINED_ENV = "TWOFILES_PYTHON_UNCONTAINED"


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = (
        20.0  # whole run, interpreter start-up and imports included; then SIGKILL to the group
    )
    cpu_seconds: int = 10  # RLIMIT_CPU: SIGXCPU at this many CPU seconds
    memory_bytes: int = 1 << 30  # RLIMIT_AS: address space (numpy + matplotlib need ~400 MB of it)
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: the largest file the code may write
    open_files: int = 256  # RLIMIT_NOFILE
    scratch_bytes: int = (
        64 << 20
    )  # the run's directory may hold this much; more and the run is killed
    scratch_entries: int = 1000  # ... or this many files and directories
    output_chars: int = 8000  # printed output kept (head and tail); the rest is elided
    code_chars: int = 100_000  # longer code is refused unrun
    max_files: int = 20  # files reported back


DEFAULT_LIMITS = Limits()

_SIGNALS: dict[int, str] = {
    signal.SIGXCPU: "CPU time limit ({cpu}s) exceeded",
    signal.SIGXFSZ: "file size limit ({file}) exceeded",
    signal.SIGSYS: "a forbidden system call was made",
}


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.0f} MB"


def _scratch_usage(root: Path, max_entries: int) -> tuple[int, int]:
    """(bytes, entries) under root; stops counting past max_entries + 1 entries."""
    total, entries = 0, 0
    stack = [str(root)]
    while stack and entries <= max_entries:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except OSError:
            pass
    return total, entries


def _elide(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 3 // 4], text[-(limit // 4) :]
    return (
        f"{head}\n[... {len(text) - len(head) - len(tail)} characters of output elided ...]\n{tail}"
    )


def _files(run_dir: Path, limit: int) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return [p for p in found if os.path.isfile(p) and not os.path.islink(p)][:limit]


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Has the child exited? Without reaping it where the OS allows (waitid WNOWAIT), so its
    process-group id stays ours until the group is killed."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return proc.poll() is not None


def run_python(
    code: str,
    run_dir: str | os.PathLike[str],
    limits: Limits = DEFAULT_LIMITS,
    *,
    report_status: bool = False,
    allow_uncontained_files: bool = False,
    file_guards: Collection[str] = FILE_GUARDS,
) -> ToolResult:
    """Run `code` in a contained child with `run_dir` (created if needed) as the only directory
    it can see besides the read-only Python installation. Never raises for anything the code
    does: failures are ToolResult(error=True).

    When the kernel cannot contain files (no mount namespace for this user), the code is not run
    and the result says why, unless `allow_uncontained_files`. `file_guards` names the file
    layers to install (all of FILE_GUARDS by default); fewer only to check that each holds on
    its own. `report_status` puts the child's status line (what it locked down) first."""
    if not isinstance(code, str):
        return ToolResult(f"code must be a string, got {type(code).__name__}", error=True)
    if len(code) > limits.code_chars:
        return ToolResult(
            f"code is {len(code)} characters; the limit is {limits.code_chars}", error=True
        )
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    linked = _hard_links(run_dir)
    if linked:
        # a second name for a file elsewhere would carry that file into the view: no
        # path-based guard can tell it from the directory's own files
        return ToolResult(
            f"{linked}: a hard link (the file has other names); the run directory may hold "
            "only files of its own, so the code was not run",
            error=True,
        )
    status_r, status_w = os.pipe()
    cfg = {
        "cpu_seconds": limits.cpu_seconds,
        "memory_bytes": limits.memory_bytes,
        "file_bytes": limits.file_bytes,
        "open_files": limits.open_files,
        "tmp_dir": str(run_dir / ".tmp"),
        "status_fd": status_w,
        "allow_uncontained_files": allow_uncontained_files,
        "file_guards": sorted(file_guards),
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(run_dir),
        "TMPDIR": str(run_dir / ".tmp"),
        "MPLCONFIGDIR": str(run_dir / ".matplotlib"),
        "MPLBACKEND": "Agg",
        "XDG_CACHE_HOME": str(run_dir / ".cache"),
        "LANG": "C.UTF-8",
        # one thread per BLAS/OpenMP pool: each extra pool thread reserves address space that
        # counts against RLIMIT_AS and steals cores from the host
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    started = time.monotonic()
    deadline = started + limits.wall_seconds
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-u", str(_CHILD), json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=run_dir,
            env=env,
            start_new_session=True,  # its own process group: one killpg reaches all it starts
            close_fds=True,
            pass_fds=(status_w,),
        )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    killed_for = ""
    out = bytearray()
    dropped = 0
    keep = limits.output_chars * 4  # bytes; the head and the tail are what is shown
    try:
        try:
            proc.stdin.write(code.encode("utf-8", "replace"))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        stdout = proc.stdout
        assert stdout is not None
        os.set_blocking(stdout.fileno(), False)
        tail = bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            last_check = 0.0
            while True:
                now = time.monotonic()
                if now >= deadline:
                    killed_for = f"timed out after {limits.wall_seconds:g}s (wall clock); the process was killed"
                    break
                if now - last_check > 0.1:
                    last_check = now
                    size, entries = _scratch_usage(run_dir, limits.scratch_entries)
                    if size > limits.scratch_bytes or entries > limits.scratch_entries:
                        killed_for = f"the working directory grew past {_mb(limits.scratch_bytes)} or {limits.scratch_entries} files; the process was killed"
                        break
                if not sel.select(timeout=min(0.1, deadline - now)):
                    continue
                chunk = stdout.read(65536)
                if chunk is None:
                    continue
                if not chunk:
                    break  # EOF: the child and everything holding its pipe have exited
                take = max(0, keep - len(out))
                out += chunk[:take]
                if len(chunk) > take:  # past the head: count it, keep only a tail window
                    dropped += len(chunk) - take
                    tail = (tail + chunk[take:])[-(keep // 4) :]
        if not killed_for:
            # wait for the leader without reaping it, so its group id cannot be reused before killpg
            while time.monotonic() < deadline:
                if _exited(proc):
                    break
                time.sleep(0.01)
            else:
                killed_for = (
                    f"timed out after {limits.wall_seconds:g}s (wall clock); the process was killed"
                )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        status = _read_status(status_r)

    text = out.decode("utf-8", "replace")
    if dropped:
        text += f"\n[... {dropped} bytes of output elided ...]\n" + bytes(tail).decode(
            "utf-8", "replace"
        )
    text = _elide(text, limits.output_chars)
    if report_status:
        text = _join("[sandbox] " + json.dumps(status), text)
    rc = proc.returncode
    if status.get("refused"):  # nothing ran: text holds at most the status line
        return ToolResult(_join(text, _refusal(status)), error=True)
    if status.get("files") != "mount namespace" and "files" in status:
        warnings.warn(
            f"the Python tool ran with files NOT contained: {status['files']}",
            RuntimeWarning,
            stacklevel=2,
        )
    files = _files(run_dir, limits.max_files)
    if killed_for:
        return ToolResult(_join(text, f"[error: {killed_for}]"), error=True, files=files)
    if rc < 0:
        why = _SIGNALS.get(-rc, "killed by signal {sig}").format(
            cpu=limits.cpu_seconds, file=_mb(limits.file_bytes), sig=-rc
        )
        return ToolResult(_join(text, f"[error: {why}]"), error=True, files=files)
    if rc != 0:
        if "MemoryError" in text[-2000:]:
            text = _join(text, f"[error: memory limit ({_mb(limits.memory_bytes)}) exceeded]")
        elif "Traceback" not in text and "Error" not in text:
            text = _join(text, f"[exit status {rc}]")
        return ToolResult(text, error=True, files=files)
    if not text.strip():
        text = "(no output)" if not files else ""
    if files:
        text = _join(text, "files: " + ", ".join(os.path.relpath(f, run_dir) for f in files))
    return ToolResult(text, files=files)


def _hard_links(run_dir: Path) -> str:
    """The first non-directory under run_dir with more than one name ('' when none)."""
    for dirpath, _, filenames in os.walk(run_dir):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if os.lstat(path).st_nlink > 1:
                    return path
            except OSError:
                pass
    return ""


def _read_status(fd: int) -> dict[str, Any]:
    """What the child wrote to its status pipe before running the code ({} if it died first)."""
    data = b""
    try:
        os.set_blocking(fd, False)
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:  # the child held the pipe open, then died writing nothing
        pass
    finally:
        os.close(fd)
    try:
        status = json.loads(data) if data else {}
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def _refusal(status: dict[str, Any]) -> str:
    return (
        "[error: the Python tool cannot keep files inside its directory on this machine "
        f"(mount namespace: {status.get('files')}; Landlock: {status.get('landlock')}), so the "
        "code was not run. It needs root or unprivileged user namespaces. To run code with "
        "files NOT contained anyway: PythonSandbox(allow_uncontained_files=True), or "
        f"{UNCONTAINED_ENV}=1 for the command line]"
    )


def _join(text: str, note: str) -> str:
    return f"{text.rstrip()}\n{note}" if text.strip() else note


class PythonSandbox:
    """The Python tool: arguments {"code": "..."}; each call runs in a fresh directory under
    `scratch_dir` (a private temporary directory when None, removed with the tool). Where the
    kernel cannot contain files, every call is refused unless `allow_uncontained_files` (None:
    whether TWOFILES_PYTHON_UNCONTAINED=1 is set)."""

    name = "python"
    description = "Run Python 3 code and return what it prints (use print). numpy and matplotlib are available; save plots with plt.savefig('name.png'). No network, no files outside the working directory, limited time and memory."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "description": "the Python code to run; print what you want to see",
            }
        },
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(
        self,
        scratch_dir: str | os.PathLike[str] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        *,
        allow_uncontained_files: bool | None = None,
    ) -> None:
        self.limits = limits
        # None: the environment decides (UNCONTAINED_ENV=1), so the command line can opt in
        self.allow_uncontained_files = (
            os.environ.get(UNCONTAINED_ENV) == "1"
            if allow_uncontained_files is None
            else allow_uncontained_files
        )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None  # made on the first run, not here
        self._scratch = Path(scratch_dir) if scratch_dir is not None else None

    @property
    def scratch_dir(self) -> Path:
        """Where the runs' directories go (a private temporary directory unless one was given)."""
        if self._scratch is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="twofiles-python-")
            self._scratch = Path(self._tmp.name)
        return self._scratch

    def run(self, arguments: dict[str, Any]) -> ToolResult:
        code = arguments.get("code") if isinstance(arguments, dict) else None
        if code is None:
            return ToolResult('missing argument "code" (a string of Python)', error=True)
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.scratch_dir))
        # matplotlib's font list takes ~1.5 s to build: hand each run the one an earlier run
        # built (it only affects code inside the sandbox, which is as untrusted as its maker)
        cache = self.scratch_dir / ".matplotlib-cache"
        mpl = run_dir / ".matplotlib"
        if cache.is_dir():
            shutil.copytree(cache, mpl)
        result = run_python(
            code, run_dir, self.limits, allow_uncontained_files=self.allow_uncontained_files
        )
        if not cache.is_dir() and mpl.is_dir():
            fontlists = [
                f
                for f in mpl.glob("fontlist-*.json")
                if f.is_file() and not f.is_symlink() and f.stat().st_size < (4 << 20)
            ]
            if fontlists:
                tmp = Path(tempfile.mkdtemp(prefix=".matplotlib-cache-", dir=self.scratch_dir))
                for f in fontlists:
                    shutil.copyfile(f, tmp / f.name)
                try:
                    os.replace(tmp, cache)
                except OSError:  # another run got there first
                    shutil.rmtree(tmp, ignore_errors=True)
        return result

    def describe_limits(self) -> dict[str, Any]:
        return asdict(self.limits)
