"""The optimizer a trial trains with (`optimizer:` in its config) and what its state costs.

- `adamw`: torch's AdamW, its fused kernel (about 10% faster per step than foreach, on CPU as on
  CUDA); states in the parameters' dtype.
- `adamw_8bit`, `paged_adamw_8bit`: bitsandbytes' 8-bit AdamW, states quantised blockwise to one
  byte each (tensors under 4,096 elements keep 32-bit states); the paged one keeps its states in
  CUDA unified memory, which the driver pages out to the host under memory pressure (on a CPU it is
  the plain 8-bit one).
- `adafactor`: transformers' Adafactor with our learning rate and schedule (no relative step), a
  matrix's second moments factored into a row and a column vector, no first moment.

Every optimizer takes the trial's peak learning rate and weight decay with the same betas and eps
as torch's AdamW, so the field changes only the optimizer.
"""

from __future__ import annotations

import torch

from lorasweep.config import TrialConfig


def make_optimizer(model: torch.nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    lr, decay = config.peak_lr, config.weight_decay
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=True)
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=lr, weight_decay=decay, relative_step=False, scale_parameter=False, warmup_init=False
        )
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if config.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    # bitsandbytes' AdamW defaults to weight decay 0.01: ours is the config's, as for torch's
    return cls(params, lr=lr, weight_decay=decay)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors held by this process (its shards, under FSDP2)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total
