"""Optimisers, learning-rate schedules and the L1 penalty of ``train.py``'s flags."""
from __future__ import annotations

import math

import torch

# The names are training.config.OPTIMIZER_NAMES, which checks --optimizer without torch.optim
# (tests/test_training_config.py keeps the two equal).
OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}


def make_optimizer(params, *, optimizer: str, lr: float, weight_decay: float, momentum: float,
                   nesterov: bool) -> torch.optim.Optimizer:
    """``--optimizer`` over ``params``; momentum applies to sgd and rmsprop only."""
    kwargs = {"lr": lr, "weight_decay": weight_decay}
    if optimizer == "sgd":
        kwargs.update(momentum=momentum, nesterov=nesterov and momentum > 0)
    elif optimizer == "rmsprop":
        kwargs.update(momentum=momentum)
    return OPTIMIZERS[optimizer](params, **kwargs)


def cosine_factor(epoch: int, *, epochs: int, warmup: int) -> float:
    """Multiplier of the initial lr in 0-based ``epoch``: linear warm-up to 1 at epoch
    ``warmup``, then a half cosine that would reach zero one epoch after the last.

    >>> [round(cosine_factor(e, epochs=4, warmup=1), 3) for e in range(4)]
    [0.5, 1.0, 0.75, 0.25]
    >>> cosine_factor(1, epochs=1, warmup=1)  # the step after a one-epoch run
    1.0
    """
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    # max(): LambdaLR also asks for the factor after the last epoch, which may be the warm-up's last
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warmup) / max(1, epochs - warmup))))


def make_scheduler(optimizer, *, schedule: str, epochs: int, warmup_epochs: int, lr_factor: float,
                   lr_patience: int):
    """``--schedule``: stepped once per epoch, plateau with the monitored loss."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: cosine_factor(epoch, epochs=epochs, warmup=warmup_epochs))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=lr_factor,
                                                      patience=lr_patience)


def l1_penalty(model: torch.nn.Module) -> torch.Tensor:
    """Sum of the absolute weights of every trainable matrix and kernel (not biases, norms)."""
    return sum(p.abs().sum() for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1)
