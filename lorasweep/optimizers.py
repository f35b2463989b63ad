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
as torch's AdamW, so the field changes only the optimizer. LoRA+ (`loraplus_lr_ratio`, arXiv
2402.12354) composes with each: PEFT's `create_loraplus_optimizer` builds the chosen one with the
B matrices and every 1-D trainable tensor (biases, DoRA's magnitudes) at `loraplus_lr_ratio` times
the LR; the schedule scales every group alike.
"""

from __future__ import annotations

import torch

from lorasweep.config import TrialConfig


def make_optimizer(model: torch.nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    """The config's optimizer over the model's trainable weights; with `loraplus_lr_ratio`, PEFT's
    LoRA+ parameter groups (the B matrices at that multiple of the LR) in the same optimizer."""
    cls, options = _optimizer_class(config)
    if config.loraplus_lr_ratio is not None:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model,
            cls,
            lr=config.peak_lr,
            loraplus_lr_ratio=config.loraplus_lr_ratio,
            loraplus_weight_decay=config.weight_decay,
            **options,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    return cls(params, lr=config.peak_lr, weight_decay=config.weight_decay, **options)


def _optimizer_class(config: TrialConfig) -> tuple[type[torch.optim.Optimizer], dict]:
    if config.optimizer == "adamw":
        return torch.optim.AdamW, {"fused": True}
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor, {"relative_step": False, "scale_parameter": False, "warmup_init": False}
    import bitsandbytes as bnb

    # bitsandbytes' AdamW defaults to weight decay 0.01: ours is the config's, as for torch's
    return (bnb.optim.PagedAdamW8bit if config.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit), {}


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors held by this process (its shards, under FSDP2)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total
