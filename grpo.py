"""GRPO: the RLVR baseline the paper compares against (Shao et al. 2024, "DeepSeekMath").

For each question, sample M completions (thinking + answer), score each with a 0/1 verifier
(exact match with the gold string in the paper), and normalize within the group:

    A_m = (r_m - mean(r)) / (std(r) + eps)

On-policy, with one update per rollout batch (the paper's setting), the PPO ratio is 1 and its
clipping never triggers, so the loss reduces to the policy gradient

    loss = -(1/B) sum_b (1/M) sum_m A_bm * (1/|o_bm|) sum_t log p(o_bm,t | ...)

Project choice: the per-sequence token mean (1/|o|) is the original GRPO aggregation. It is kept
because it is what "GRPO" means in the paper's comparison; Dr. GRPO and DAPO argue for other
normalizations (it biases towards short wrong answers and long right ones). No KL term and no
reference model: the paper's GRPO settings are not published, and GARL/PAFT have none either.

A group whose rewards are all equal (all right or all wrong) has A = 0: it contributes no
gradient. Under cold start nearly every group is all-wrong, which is why RLVR stalls there.
"""
import torch


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalized advantages: (r - mean) / (std + eps) over the last dim (the M samples).

    std is the unbiased sample std, as in TRL's GRPOTrainer.

    >>> grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    tensor([[ 1.4997, -0.4999, -0.4999, -0.4999],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    if rewards.shape[-1] < 2:
        raise ValueError(f"GRPO normalizes within a group: need M >= 2 samples per question, got {rewards.shape[-1]}")
    rewards = rewards.to(torch.float32)
    mean = rewards.mean(-1, keepdim=True)  # [B, 1]
    std = rewards.std(-1, keepdim=True)  # [B, 1]
    return (rewards - mean) / (std + eps)  # [B, M]


def grpo_coefficients(rewards: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO in the per-sequence form the trainer shares with GARL and PAFT.

    Returns coef [B, M] with coef_bm = A_bm / (|o_bm| * M), so that grpo_loss equals the mean over
    B of -(coef * sum_t log p(o_t)).sum(-1). The trainer can then micro-batch sequences freely.

    >>> grpo_coefficients(torch.tensor([[1.0, 0.0]]), lengths=torch.tensor([[4, 2]]))
    tensor([[ 0.0884, -0.1768]])
    """
    lengths = lengths.to(torch.float32).clamp(min=1)
    return grpo_advantages(rewards, eps) / (lengths * rewards.shape[-1])


def grpo_loss(token_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """On-policy GRPO loss over token log-probs.

    Args:
        token_logp: [N, T] log p of each completion token (N = B*M sequences), with gradient.
        mask: [N, T] 1 for completion tokens that count, 0 for prompt and padding.
        advantages: [N] from grpo_advantages, flattened.
    Returns:
        -(1/N) sum_n A_n * mean_t(token_logp_n over its mask): the per-sequence token mean, then
        the mean over all N = B*M sequences (= mean over questions of the mean over the group).

    >>> grpo_loss(torch.tensor([[-1.0, -3.0]]), torch.tensor([[1, 1]]), torch.tensor([2.0]))
    tensor(4.)
    """
    mask = mask.to(token_logp.dtype)
    seq_mean = (token_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
    return -(advantages.to(token_logp.dtype) * seq_mean).mean()
