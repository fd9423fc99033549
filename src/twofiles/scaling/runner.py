"""Running a sweep: each point is an ordinary `twofiles pretrain` process.

What it owns: preparing the built-in corpus once for a sweep (through `twofiles tokenizer train`
and `twofiles data prepare`), each point's command line, a point's state (done, killed, missing),
running the missing points K at a time with the threads split between them, and SWEEP/results.jsonl
(one line per finished point: its held-out loss in nats/token and bits/byte, tokens/s, wall time).
What it leaves to others: the training (`twofiles pretrain`: checkpoints, resume), the plan
(scaling.plan). Running the points as processes, not in-process, is what lets a cluster scheduler
run the very same commands (`--print-commands`), and keeps this package free of the training code.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twofiles.errors import BadInputError, TwofilesError
from twofiles.scaling.plan import Point, Sweep

RESULTS_FILE = "results.jsonl"
LOG_NAME = "pretrain.log"  # each point's stdout and stderr, in its run directory

# recipe optimizer field -> `twofiles pretrain` flag (embed_lr has no flag: --preset carries it)
_OPTIM_FLAGS = {
    "optimizer": "--optimizer",
    "lr": "--lr",
    "matrix_lr": "--matrix-lr",
    "weight_decay": "--weight-decay",
    "schedule": "--schedule",
    "warmup_steps": "--warmup-steps",
    "decay_frac": "--decay-frac",
    "grad_clip": "--grad-clip",
}
_MODEL_FLAGS = {
    "dim": "--dim",
    "n_layers": "--n-layers",
    "n_heads": "--n-heads",
    "n_kv_heads": "--n-kv-heads",
    "hidden_dim": "--hidden-dim",
}


def twofiles_cmd() -> list[str]:
    return [sys.executable, "-m", "twofiles"]


def prepare_builtin(sweep_dir: Path, vocab_size: int, *, quiet: bool = True) -> dict[str, Any]:
    """The built-in corpus as the speedrun prepares it (tokenizer trained on the training plays,
    whole plays held out), once, into SWEEP/data; returns its manifest."""
    data = sweep_dir / "data"
    manifest = data / "manifest.json"
    if not manifest.is_file():
        tok = sweep_dir / "tokenizer.json"
        cmds = [
            [*twofiles_cmd(), "tokenizer", "train", "--vocab-size", str(vocab_size), "--out", str(tok)],
            [*twofiles_cmd(), "data", "prepare", "builtin:shakespeare", "--out", str(data),
             "--tokenizer", str(tok), "--no-progress"],
        ]  # fmt: skip
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=quiet, text=True, env=_env())
            if r.returncode != 0:
                raise TwofilesError(
                    f"preparing the data failed: {shlex.join(cmd)}\n{(r.stderr or '')[-2000:]}"
                )
    return read_manifest(data)


def read_manifest(data: Path) -> dict[str, Any]:
    path = Path(data) / "manifest.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        int(doc["vocab_size"])
        int(doc["splits"]["train"]["tokens"])
        return doc
    except OSError:
        raise BadInputError(
            "no prepared data here (twofiles data prepare writes manifest.json)", path=str(path)
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise BadInputError(f"not a data manifest ({e})", path=str(path)) from None


def _env() -> dict[str, str]:
    """The child sees the same twofiles as this process (a source checkout on PYTHONPATH too)."""
    import twofiles

    env = dict(os.environ)
    src = str(Path(twofiles.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class PointState:
    point: Point
    state: str  # "done", "killed" (has checkpoints: resumes), "missing"
    run_dir: Path


def point_state(sweep_dir: Path, p: Point) -> PointState:
    d = sweep_dir / p.run_dir
    if (d / "model.safetensors").is_file() and _run_numbers(d) is not None:
        return PointState(p, "done", d)
    ckpts = d / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        return PointState(p, "killed", d)
    return PointState(p, "missing", d)


def _run_numbers(run_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        nums = doc["numbers"]
        float(nums["val_loss"])
        return dict(nums)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def point_command(
    sweep: Sweep, sweep_dir: Path, p: Point, *, threads: int, resume: bool
) -> list[str]:
    """The `twofiles pretrain` command of one point. A resume names only what may change (the
    run's saved config holds the rest)."""
    r = sweep.recipe
    out = str((sweep_dir / p.run_dir).resolve())
    data = str(sweep.data_dir(sweep_dir).resolve())
    cmd = [*twofiles_cmd(), "pretrain", "--data", data, "--out", out]
    if resume:
        cmd += ["--resume"]
    else:
        cmd += ["--preset", str(r["preset"])]
        for k, flag in _MODEL_FLAGS.items():
            cmd += [flag, str(p.model[k])]
        cmd += ["--tie-embeddings" if r["tie_embeddings"] else "--no-tie-embeddings"]
        for k, flag in _OPTIM_FLAGS.items():
            if k in r["optim"]:
                cmd += [flag, str(r["optim"][k])]
        cmd += ["--batch-size", str(r["batch_size"]), "--seq-len", str(r["seq_len"])]
        cmd += ["--grad-accum", str(r.get("grad_accum", 1)), "--seed", str(r.get("seed", 1337))]
        cmd += ["--eval-interval", "0", "--max-steps", str(p.steps)]
        cmd += ["--dtype", str(r.get("dtype", "fp32"))]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd + ["--json", "--no-progress"]


def shell_command(cmd: list[str], run_dir: Path) -> str:
    """One line for a shell or a scheduler: the command, its output into the point's log."""
    log = shlex.quote(str((run_dir / LOG_NAME).resolve()))
    return f"mkdir -p {shlex.quote(str(run_dir.resolve()))} && {shlex.join(cmd)} > {log} 2>&1"


# --- results ---------------------------------------------------------------------------------


def result_record(sweep_dir: Path, p: Point, wall_s: float | None) -> dict[str, Any]:
    """What the fit needs of a finished point, from its run.json."""
    d = sweep_dir / p.run_dir
    nums = _run_numbers(d)
    if nums is None:
        raise BadInputError(f"point {p.name} has no results (run.json)", path=str(d))
    return {
        "name": p.name,
        "depth": p.depth,
        "steps": int(nums.get("steps", p.steps)),
        "tokens": int(nums.get("tokens", p.tokens)),
        "n_all": p.n_all,
        "n_matmul": p.n_matmul,
        "n_nonembed": p.n_nonembed,
        "flops": p.flops,
        "heldout": p.heldout,
        "isoflop": p.isoflop,
        "val_loss": float(nums["val_loss"]),  # nats per token on the held-out plays
        "val_bpb": float(nums["val_bpb"]),  # bits per byte on the held-out plays
        "tokens_per_s": float(nums.get("tokens_per_second", 0.0)),
        "train_s": float(nums.get("train_seconds", 0.0)),
        "wall_s": float(wall_s if wall_s is not None else nums.get("train_seconds", 0.0)),
    }


def read_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    from twofiles.paths import read_jsonl

    path = Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    rows = []
    for n, obj in read_jsonl(path, "sweep results"):
        if not isinstance(obj, dict) or not {"name", "val_loss", "tokens", "n_all"} <= set(obj):
            raise BadInputError("not a sweep result line", path=str(path), line=n)
        rows.append(obj)
    return rows


def write_results(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    from twofiles.paths import atomic_write_bytes

    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write_bytes(sweep_dir / RESULTS_FILE, text.encode())


def collect_results(sweep: Sweep, sweep_dir: Path, walls: dict[str, float]) -> list[dict[str, Any]]:
    """One line per done point, in plan order: earlier lines kept (their wall time), new ones
    read from the run."""
    old = {r["name"]: r for r in read_results(sweep_dir)}
    rows = []
    for p in sweep.points:
        if point_state(sweep_dir, p).state != "done":
            continue
        wall = walls.get(p.name, old.get(p.name, {}).get("wall_s"))
        rows.append(result_record(sweep_dir, p, wall))
    write_results(sweep_dir, rows)
    return rows


# --- running ---------------------------------------------------------------------------------


@dataclass
class RunSummary:
    done: int  # points finished (this run or before)
    ran: int  # points run by this call
    skipped: int  # points already done
    failed: list[dict[str, str]]  # {"name", "log"}
    wall_s: float
    total: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_sweep(
    sweep: Sweep,
    sweep_dir: Path,
    *,
    jobs: int = 1,
    threads: int = 0,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> RunSummary:
    """Run every point not yet done, `jobs` at a time (each with threads // jobs threads), in
    order of compute so the cheap points (and a first fit) come early; a failed point is reported
    with its log and the others go on."""
    t0 = time.perf_counter()
    states = [point_state(sweep_dir, p) for p in sweep.points]
    # cheapest first, the held-out point among them: a first fit and its test come early
    todo = sorted((s for s in states if s.state != "done"), key=lambda s: s.point.flops)
    skipped = len(states) - len(todo)
    total = len(states)
    per_job = max(1, threads // max(jobs, 1)) if threads else 0
    walls: dict[str, float] = {}
    failed: list[dict[str, str]] = []
    running: list[tuple[PointState, subprocess.Popen[bytes], float, Any]] = []
    done = skipped
    cost_done = 0.0  # FLOPs of the points this call finished, for the ETA
    cost_left = sum(s.point.flops for s in todo)
    say(f"{total} points: {skipped} done, {len(todo)} to run ({jobs} at a time)")
    collect_results(sweep, sweep_dir, walls)
    queue = list(todo)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a scheduler's stop, as Ctrl-C
    try:
        while queue or running:
            while queue and len(running) < jobs:
                s = point_state(sweep_dir, queue.pop(0).point)  # as it is now, not at the start
                if s.state == "done":  # finished meanwhile by another runner
                    continue
                s.run_dir.mkdir(parents=True, exist_ok=True)
                cmd = point_command(
                    sweep, sweep_dir, s.point, threads=per_job, resume=s.state == "killed"
                )
                log = open(s.run_dir / LOG_NAME, "ab")  # noqa: SIM115 (closed when the process ends)
                log.write(f"$ {shlex.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
                running.append((s, proc, time.perf_counter(), log))
                say(f"start {s.point.name}" + (" (resuming)" if s.state == "killed" else ""))
            time.sleep(0.2)
            for item in list(running):
                s, proc, started, log = item
                rc = proc.poll()
                if rc is None:
                    continue
                running.remove(item)
                log.close()
                wall = time.perf_counter() - started
                if rc == 0 and point_state(sweep_dir, s.point).state == "done":
                    walls[s.point.name] = wall
                    done += 1
                    cost_done += s.point.flops
                    cost_left -= s.point.flops
                    rows = collect_results(sweep, sweep_dir, walls)
                    last = next(r for r in rows if r["name"] == s.point.name)
                    elapsed = time.perf_counter() - t0
                    eta = elapsed / cost_done * cost_left if cost_done else float("nan")
                    say(
                        f"[{done}/{total}] {s.point.name}: loss {last['val_loss']:.4f} nats/token, "
                        f"{last['val_bpb']:.4f} bits/byte, {last['tokens_per_s']:,.0f} tokens/s, "
                        f"{wall:.0f}s; ETA {_fmt_s(eta)}"
                    )
                else:
                    cost_left -= s.point.flops
                    log_path = str(s.run_dir / LOG_NAME)
                    failed.append({"name": s.point.name, "log": log_path})
                    say(f"FAILED {s.point.name} (exit {rc}): see {log_path}")
    except BaseException:  # Ctrl-C: stop the children (they checkpoint on SIGTERM and resume)
        for _, proc, _, _ in running:
            proc.terminate()
        for _, proc, _, log in running:
            proc.wait()
            log.close()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return RunSummary(
        done=done,
        ran=len(todo) - len(failed),
        skipped=skipped,
        failed=failed,
        wall_s=time.perf_counter() - t0,
        total=total,
    )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _fmt_s(s: float) -> str:
    if s != s:  # nan
        return "?"
    return f"{s / 60:.0f}m{s % 60:02.0f}s" if s >= 60 else f"{s:.0f}s"
