"""Loss curves as PNG: pretraining (training loss, validation bits per byte against steps and wall
time), finetuning (loss on assistant tokens, held-out skill accuracy), DPO (loss, reward margin and
accuracy) and RL (reward, held-out pass@1, a control run beside it). Files are written by
twofiles.plots.save_png."""

from __future__ import annotations

import json
from pathlib import Path

from twofiles.plots import save_png


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    train: list[dict] = []
    evals: list[dict] = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        (evals if "val_bpb" in rec else train).append(rec)
    return train, evals


def plot_losses(metrics_path: str | Path, png_path: str | Path, title: str = "pretraining") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(metrics_path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        ax1.plot(steps, losses, alpha=0.3, color="C0", label="train loss")
        k = max(1, len(losses) // 30)  # moving average over ~3% of the run
        smooth = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax1.plot(steps, smooth, color="C0", label="train loss (smoothed)")
    if evals:
        ax1.plot(
            [r["step"] for r in evals],
            [r["val_loss"] for r in evals],
            "o-",
            color="C1",
            label="val loss",
        )
        ax2.plot([r["time"] / 60 for r in evals], [r["val_bpb"] for r in evals], "o-", color="C1")
        best = evals[-1]
        ax2.annotate(
            f"{best['val_bpb']:.3f}",
            (best["time"] / 60, best["val_bpb"]),
            textcoords="offset points",
            xytext=(-10, 8),
        )
    ax1.set_xlabel("step")
    ax1.set_ylabel("nats / token")
    ax1.set_title(f"{title}: loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("training wall time (minutes)")
    ax2.set_ylabel("validation bits per byte")
    ax2.set_title("quality per minute")
    ax2.grid(alpha=0.3)
    return save_png(fig, png_path, dpi=110)


def plot_sft(metrics_path: str | Path, png_path: str | Path) -> Path:
    """SFT: training and held-out loss per assistant token against steps, and held-out skill
    accuracy per kind before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "val_loss" in r]
    skills = [r for r in recs if "skills" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax1.plot(
            [r["step"] for r in train],
            [r["loss"] for r in train],
            alpha=0.5,
            color="C0",
            label="train loss",
        )
    if evals:
        ax1.plot(
            [r["step"] for r in evals],
            [r["val_loss"] for r in evals],
            "o-",
            color="C1",
            label="held-out loss",
        )
    ax1.set_xlabel("step")
    ax1.set_ylabel("nats / assistant token")
    ax1.set_title("finetuning: loss on assistant tokens")
    ax1.legend()
    ax1.grid(alpha=0.3)
    if skills:
        kinds = list(skills[-1]["skills"]["by_kind"])
        width = 0.8 / len(skills)
        for j, r in enumerate(skills):
            label = (
                "before"
                if j == 0 and len(skills) > 1
                else "after"
                if r.get("final")
                else f"step {r['step']}"
            )
            ax2.bar(
                [i + j * width for i in range(len(kinds))],
                [100 * r["skills"]["by_kind"].get(k, 0) for k in kinds],
                width,
                label=label,
            )
        ax2.set_xticks(
            [i + width * (len(skills) - 1) / 2 for i in range(len(kinds))],
            kinds,
            rotation=30,
            ha="right",
        )
        ax2.set_ylim(0, 100)
        ax2.legend()
    ax2.set_ylabel("held-out exact match (%)")
    ax2.set_title("skills")
    ax2.grid(alpha=0.3, axis="y")
    return save_png(fig, png_path, dpi=110)


def plot_rl(
    metrics_path: str | Path, png_path: str | Path, compare: str | Path | None = None
) -> Path:
    """RL: the rollouts' mean reward (and the verifier's accuracy on them, when the reward was
    something else) against steps, and
    held-out greedy pass@1 against steps; `compare` (another run's metrics.jsonl, the random-reward
    control) is drawn beside it, dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def read(path: str | Path) -> tuple[list[dict], list[dict]]:
        recs = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
        return [r for r in recs if "reward" in r], [r for r in recs if "pass@1" in r]

    def smooth(xs: list[float]) -> list[float]:
        k = max(1, len(xs) // 15)
        return [
            sum(xs[max(0, i - k + 1) : i + 1]) / len(xs[max(0, i - k + 1) : i + 1])
            for i in range(len(xs))
        ]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    runs = [("", Path(metrics_path), "-")]
    if compare is not None and Path(compare).is_file():
        runs.append((" (control)", Path(compare), "--"))
    for j, (tag, path, style) in enumerate(runs):
        steps, evals = read(path)
        if steps:
            x = [r["step"] for r in steps]
            ax1.plot(
                x, smooth([r["reward"] for r in steps]), style, color="C0", label=f"reward{tag}"
            )
            if any(r["reward"] != r["accuracy"] for r in steps):  # a reward other than the verifier
                ax1.plot(
                    x,
                    smooth([r["accuracy"] for r in steps]),
                    style,
                    color="C2",
                    label=f"verifier accuracy{tag}",
                )
        if evals:
            ax2.plot(
                [r["step"] for r in evals],
                [100 * r["pass@1"] for r in evals],
                "o" + style,
                color=f"C{1 + 2 * j}",
                label=f"held-out pass@1{tag}",
            )
    ax1.set_xlabel("step")
    ax1.set_ylabel("mean over the step's rollouts (smoothed)")
    ax1.set_title("RL: reward")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out pass@1, greedy (%)")
    ax2.set_title("held-out")
    ax2.legend()
    ax2.grid(alpha=0.3)
    return save_png(fig, png_path, dpi=110)


def plot_dpo(metrics_path: str | Path, png_path: str | Path) -> Path:
    """DPO: the loss, the implicit-reward margin (rewards/margins) and accuracy
    (rewards/accuracies) against steps, on the training steps and the held-out pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_loss" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = (
        ("loss", "loss", "eval_loss", "DPO loss"),
        (
            "rewards/margins",
            "rewards/margins",
            "eval_rewards/margins",
            "reward margin (nats x beta)",
        ),
        (
            "rewards/accuracies",
            "rewards/accuracies",
            "eval_rewards/accuracies",
            "chosen rewarded above rejected",
        ),
    )
    for ax, (title, key, eval_key, ylabel) in zip(axes, panels, strict=True):
        if train:
            ax.plot(
                [r["step"] for r in train],
                [r[key] for r in train],
                alpha=0.5,
                color="C0",
                label="train (step)",
            )
        if evals:
            ax.plot(
                [r["step"] for r in evals],
                [r[eval_key] for r in evals],
                "o-",
                color="C1",
                label="held-out",
            )
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_png(fig, png_path, dpi=110)
