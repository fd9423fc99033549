"""SAELens's TopK trainer on bench/sae.py's saved activations (runs in the venv that has sae-lens;
imports nothing from twofiles). Reads WORK/train.npy (normalised, in training order) and
WORK/eval.npy; writes WORK/saelens.safetensors (W_enc, b_enc, W_dec, b_dec with the decoder norm
folded in as SAELens's `_fold_norm_topk` folds it, so unit decoder rows as twofiles keeps them),
WORK/saelens_recon.npy (its reconstruction of the first 256 held-out rows, before folding) and,
on the last line of stdout, JSON with the step times.

The loop is SAETrainer.fit's without wandb and checkpoints: maybe_reset_sparsity, step (its
training forward pass with AuxK and the dead-feature mask, backward, clip 1.0, Adam, its LR
scheduler), n_training_steps += 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--dead-tokens", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--b-dec-init", default="", help="a .npy to start b_dec from (SAELens's default: zeros)"
    )
    p.add_argument("--name", default="saelens", help="file prefix for what it writes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import sae_lens
    from sae_lens import LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import save_file

    work = Path(args.work)
    rows = torch.from_numpy(np.load(work / "train.npy"))
    d_in = rows.shape[1]
    torch.manual_seed(0)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=d_in, d_sae=d_in * args.expansion, k=args.k, device="cpu")
    )
    if args.b_dec_init:
        with torch.no_grad():
            sae.b_dec.copy_(torch.from_numpy(np.load(args.b_dec_init)))
    n = args.batch_tokens
    cfg = SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=args.steps * n,
        device="cpu",
        autocast=False,
        lr=args.lr,
        lr_end=0.0,
        lr_scheduler_name="constant",
        lr_warm_up_steps=args.warmup,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_decay_steps=args.steps // 5,  # the same linear decay over the last fifth as ours
        n_restart_cycles=1,
        train_batch_size_samples=n,
        dead_feature_window=max(1, args.dead_tokens // n),  # in steps
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False),
    )

    def batches():
        step = 0
        while True:
            yield rows[(torch.arange(n) + step * n) % len(rows)]
            step += 1

    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches())
    times = []
    data = batches()
    for _ in range(args.steps):
        batch = next(data)
        t0 = time.perf_counter()
        trainer.maybe_reset_sparsity()
        trainer.step(batch)
        trainer.n_training_steps += 1
        times.append(time.perf_counter() - t0)
    x = torch.from_numpy(np.load(work / "eval.npy"))[:256]
    sae.eval()
    with torch.no_grad():
        recon = sae.decode(sae.encode(x))
    np.save(work / f"{args.name}_recon.npy", recon.numpy())
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    # fold the decoder norm as SAELens's _fold_norm_topk does when it saves for inference
    norm = state["W_dec"].norm(dim=-1).clamp(min=1e-8)
    state["b_enc"] = state["b_enc"] * norm
    state["W_dec"] = state["W_dec"] / norm[:, None]
    state["W_enc"] = state["W_enc"] * norm[None, :]
    keep = {k: state[k].contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    save_file(keep, str(work / f"{args.name}.safetensors"))
    print(json.dumps({"version": sae_lens.__version__, "step_seconds": times}))


if __name__ == "__main__":
    main()
