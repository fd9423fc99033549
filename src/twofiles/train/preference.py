"""The DPO family's math: sequence log-probs of completions, and the losses on them.

What it owns: `sequence_logps` (sum of a completion's token log-probs after its prompt, batched
with right padding) and `dpo_loss` (sigmoid DPO, IPO, hinge, robust; optionally + NLL on the
chosen completion, "DPO+NLL" / RPO), with the metrics under the names TRL users know:
rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen,
logps/rejected. The formulas follow TRL's DPOTrainer (trl 1.16) term for term.

What it leaves to others: the pairs and their ids (data/preferences.py), the frozen reference
model (the caller evaluates it under torch.no_grad, or precomputes its log-probs once), the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

LossKind = Literal["sigmoid", "ipo", "hinge", "robust"]
LOSS_KINDS: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "robust")


def sequence_logps(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(completion token | everything before it) [B] fp32, completion tokens [B]).

    `model(idx)` must return logits [B, T, V]. Rows are prompt + completion, right-padded: under
    the causal mask no real token sees padding, so each row computes what it would alone."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    if any(len(c) == 0 for c in completion_ids) or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt and completion needs at least one token")
    device = next(model.parameters()).device
    T = max(len(r) for r in rows) - 1
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, (row, p) in enumerate(zip(rows, prompt_ids, strict=True)):
        n = len(row) - 1
        inputs[b, :n] = torch.tensor(row[:-1])
        # target t is token t+1: the completion's tokens are targets len(p)-1 .. n-1
        targets[b, len(p) - 1 : n] = torch.tensor(row[len(p) :])
    inputs, targets = inputs.to(device), targets.to(device)
    logits = model(inputs).float()  # [B, T, V]
    token_logps = -F.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=-1, reduction="none"
    )  # [B, T], 0 where ignored
    return token_logps.sum(dim=1), (targets >= 0).sum(dim=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    kind: LossKind = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    nll_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch's mean loss and its metrics, from summed sequence log-probs [B] of the policy
    and of the frozen reference.

    kind: "sigmoid" -log σ(β Δ) (DPO; with label_smoothing ε, conservative DPO:
    -(1-ε) log σ(β Δ) - ε log σ(-β Δ)), "ipo" (Δ from per-token averages, (Δ - 1/(2β))²; needs
    the token counts), "hinge" relu(1 - β Δ), "robust" (rDPO, needs 0 <= ε < 0.5), where Δ is
    (policy - ref) on chosen minus (policy - ref) on rejected.
    nll_weight > 0 adds that times the chosen completions' NLL averaged over all their tokens in
    the batch (TRL's "sft" term; its rpo_alpha), and needs chosen_tokens."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind {kind!r} is not one of {', '.join(LOSS_KINDS)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive (got {beta})")
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    delta = chosen_logratios - rejected_logratios
    if kind == "sigmoid":
        # label smoothing: the labels are flipped with probability ε (cDPO)
        losses = -(1 - label_smoothing) * F.logsigmoid(
            beta * delta
        ) - label_smoothing * F.logsigmoid(-beta * delta)
    elif kind == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the IPO loss needs chosen_tokens and rejected_tokens")
        # IPO's Δ is per token (TRL's normalization, confirmed with the IPO authors), so β means
        # the same whatever the completions' lengths; Eq. 17 of arXiv:2310.12036 with τ = β
        avg = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / (
            rejected_tokens.clamp(min=1)
        )
        losses = (avg - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # robust: an unbiased loss under label noise ε, arXiv:2403.00409
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(
                f"the robust loss needs 0 <= label_smoothing < 0.5 ({label_smoothing})"
            )
        losses = (
            -(1 - label_smoothing) * F.logsigmoid(beta * delta)
            + label_smoothing * F.logsigmoid(-beta * delta)
        ) / (1 - 2 * label_smoothing)
    loss = losses.mean()
    metrics: dict[str, float] = {}
    if nll_weight:
        if chosen_tokens is None:
            raise ValueError("the NLL term needs chosen_tokens")
        nll = -policy_chosen.sum() / chosen_tokens.sum().clamp(min=1)
        loss = loss + nll_weight * nll
        metrics["nll_loss"] = float(nll.detach())
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    metrics.update(
        {
            "rewards/chosen": float(chosen_rewards.mean()),
            "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
            "logps/chosen": float(policy_chosen.detach().mean()),
            "logps/rejected": float(policy_rejected.detach().mean()),
        }
    )
    return loss, metrics
