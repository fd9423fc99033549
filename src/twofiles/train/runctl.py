"""Run control shared by the training loops: the schedule's length under a time budget, checkpoints
by wall time, a clean stop on Ctrl-C or SIGTERM, and the check that a `--resume` does not change
what the run is.

What it owns: deciding *when* (how many steps, when to checkpoint, when to stop) and refusing a
resume that would silently train a different run. What it leaves to others: the steps themselves,
the checkpoint format (train/checkpoint.py), the LR shape (optim.lr_factor).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from twofiles.errors import BadInputError
from twofiles.optim import OptimConfig, lr_factor


class _RunConfig(Protocol):
    time_budget_s: float


C = TypeVar("C", bound=_RunConfig)  # a run's config dataclass (PretrainConfig, SFTConfig)

# Seconds between checkpoints by default: a crash loses at most this much work, and a checkpoint of
# a CPU-sized model (tens of MB) costs well under a second, < 2% of the interval.
CHECKPOINT_SECONDS = 60.0

# Steps in the moving window that measures the step rate under a time budget. Short enough to
# follow a machine that slows down mid-run (another job starting on a shared core), long enough to
# smooth single slow steps (an evaluation, a checkpoint).
RATE_WINDOW = 20

# Steps after which a time-budgeted run measures what an evaluated token costs against a trained
# one (two windows in: past the first steps' one-off costs, early enough to plan the reserve).
EVAL_PROBE_AFTER = 2 * RATE_WINDOW


def probe_due(steps_since_start: int) -> bool:
    """True at EVAL_PROBE_AFTER steps after the (re)start and at each doubling of it (40, 80, 160,
    ...): a few probes early, where the reserve is planned, and ever fewer as the run goes."""
    k, r = divmod(steps_since_start, EVAL_PROBE_AFTER)
    return r == 0 and k > 0 and k & (k - 1) == 0


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on SIGINT/SIGTERM after saving a checkpoint; `--resume` continues it.
    A KeyboardInterrupt, so callers that do not know it still stop as on Ctrl-C."""

    def __init__(self, signum: int, step: int, out: str) -> None:
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.out = signum, step, out

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Planner:
    """The LR schedule and its length. With `max_steps` (no time budget) it is exactly
    optim.lr_factor over max_steps. With a time budget, the length is re-estimated every step from
    the step rate over the last RATE_WINDOW steps, so a machine that slows down or speeds up still
    ends the run on its budget (a length frozen when the decay began overran or fell short of it
    whenever the machine's speed changed: docs/LOG.md, 2026-12-06). Re-estimating moves the end, so the LR is kept monotone: after warm-up it never rises,
    and WSD's decay, once begun, runs from the step it began at to the current estimate of the
    end."""

    def __init__(
        self,
        optim: OptimConfig,
        max_steps: int,
        time_budget_s: float = 0.0,
        reserve_s: Callable[[float], float] | None = None,
    ) -> None:
        self.optim, self.budget = optim, time_budget_s
        self.total = max_steps
        # reserve_s(per_step_seconds) -> seconds kept for what follows the last step (the final
        # evaluation), estimated from the same measured speed
        self.reserve_s = reserve_s or (lambda per_step: 0.0)
        self.decay_start: int | None = None
        self.last_lr = math.inf
        self._times: deque[tuple[int, float]] = deque(maxlen=RATE_WINDOW + 1)
        self._start: int | None = None  # the step this process started (or resumed) at

    @property
    def timed(self) -> bool:
        return self.budget > 0

    @property
    def per_step(self) -> float | None:
        """Seconds per step over the recent window (None before two observations)."""
        if len(self._times) < 2:
            return None
        (s0, t0), (s1, t1) = self._times[0], self._times[-1]
        return max((t1 - t0) / max(s1 - s0, 1), 1e-6)

    def observe(self, step: int, elapsed: float) -> int:
        """Record that `step` steps are done at `elapsed` seconds; return the (new) total. The
        rate is measured from the end of the first step after a (re)start: that step pays for
        warming up (torch.compile's compilation: 8-25 s against 0.15 s a step at the speedrun's
        shape), and counted in the rate it made the final evaluation's reserve look larger than
        the budget, ending a compiled run after one step."""
        if not self.timed:
            return self.total
        if self._start is None:
            self._start = step  # before the first step: nothing measured yet
            return self.total
        if step == self._start:
            return self.total
        self._times.append((step, elapsed))
        per_step = self.per_step
        if per_step is None:
            return self.total
        left = self.budget - self.reserve_s(per_step) - elapsed
        self.total = step + max(0, int(left / per_step))
        return self.total

    def lr(self, step: int) -> float:
        """The LR multiplier of the step about to run (0-based)."""
        o = self.optim
        if not self.timed:
            return lr_factor(step, self.total, o)
        if step < o.warmup_steps or o.schedule == "constant":
            f = lr_factor(step, max(self.total, step + 1), o)
        elif o.schedule == "wsd":
            if self.decay_start is None and step >= int(self.total * (1 - o.decay_frac)):
                self.decay_start = step
            if self.decay_start is None:
                f = 1.0
            else:
                span = max(1, self.total - self.decay_start)
                progress = min(1.0, (step - self.decay_start) / span)
                f = o.min_lr_frac + (1 - o.min_lr_frac) * (1 - progress)
        else:
            f = lr_factor(step, max(self.total, step + 1), o)
        if step >= o.warmup_steps:
            f = min(f, self.last_lr)
            self.last_lr = f
        return f

    def state_dict(self) -> dict[str, Any]:
        return {
            "total_steps": self.total,
            "decay_start": self.decay_start,
            "last_lr": None if math.isinf(self.last_lr) else self.last_lr,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.timed:  # a fixed-length run takes its length from the (possibly longer) config
            self.total = int(state.get("total_steps", self.total))
        self.decay_start = state.get("decay_start")
        last = state.get("last_lr")
        self.last_lr = math.inf if last is None else float(last)


class CheckpointTimer:
    """True once every `every_s` seconds of run time (0: never)."""

    def __init__(self, every_s: float, now: float = 0.0) -> None:
        self.every_s, self.last = every_s, now

    def due(self, now: float) -> bool:
        if self.every_s <= 0 or now - self.last < self.every_s:
            return False
        self.last = now
        return True

    def reset(self, now: float) -> None:
        self.last = now


class StopSignals:
    """The first SIGINT or SIGTERM asks the loop to stop after its current step (it saves a
    checkpoint first); a second SIGINT stops at once (KeyboardInterrupt)."""

    def __init__(self, log: Any = None) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            self._log(
                f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint"
                " (Ctrl-C again to quit at once, without one)"
            )

    def install(self) -> None:
        """Install the handlers for the loop. Only the main thread may install handlers:
        elsewhere (a run inside a server thread) this is a no-op and Ctrl-C behaves as before."""
        if threading.current_thread() is not threading.main_thread() or self._old:
            return
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        """Put the previous handlers back (idempotent: also called when the loop raised)."""
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def agree(rt: Any, total: int, stop: bool) -> tuple[int, bool]:
    """Under DDP every rank must run the same number of steps: rank 0's length, and a stop when any
    rank was signalled. One tiny all-reduce per step; nothing in one process."""
    if rt.world_size <= 1:
        return total, stop
    import torch
    import torch.distributed as dist

    t = torch.tensor([total if rt.rank == 0 else 0, int(stop)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]), bool(t[1])


# What a resumed run may change: how long it runs, where, how it reports. Everything else (the
# model, data, LoRA, optimizer, batch, seeds, what is scored) is the run's own: changing it would
# silently train a run the checkpoint does not belong to. A stage without one of these fields
# never gives it, so one set serves every stage.
RESUME_CHANGEABLE = frozenset(
    {
        "max_steps",
        "epochs",
        "time_budget_s",
        "threads",
        "compile",
        "eval_interval",
        "eval_tokens",
        "sample_interval",
        "checkpoint_interval",
        "checkpoint_seconds",
    }
)


def resumed(saved: Mapping[str, Any], cfg: C, given: Mapping[str, tuple[str, Any]]) -> C:
    """`cfg` (built from the saved run's config `saved`) with the flags a resume may take applied
    (check_resume refuses the others); `--max-steps` alone means a fixed length, as it does for a
    new run."""
    apply = check_resume(saved, given)
    for name in apply:
        setattr(cfg, name, given[name][1])
    if "max_steps" in apply and "time_budget_s" not in apply:
        cfg.time_budget_s = 0.0
    return cfg


def check_resume(saved: Mapping[str, Any], given: Mapping[str, tuple[str, Any]]) -> list[str]:
    """The fields of `given` (dotted field -> (flag, value)) that a resume may take: those in
    RESUME_CHANGEABLE and those equal to the saved run's. Anything else would train a different run
    than the checkpoint's, so it is refused with every conflict named."""
    conflicts, apply = [], []
    for name, (flag, value) in given.items():
        old: Any = saved
        for part in name.split("."):
            old = old.get(part) if isinstance(old, Mapping) else None
        if name in RESUME_CHANGEABLE:
            apply.append(name)
        elif old != value and not (isinstance(old, list) and list(value) == old):
            conflicts.append(f"{flag} (the run has {old!r}, given {value!r})")
    if conflicts:
        raise BadInputError(
            "--resume continues the run as it was started; these flags would change it: "
            + "; ".join(conflicts)
            + ". Drop them, or start a new run in another --out"
        )
    return apply
