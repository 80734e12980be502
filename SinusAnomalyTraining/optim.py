"""Optimiser and learning-rate schedule used for self-supervised pre-training.

* :class:`LARS` — SGD with momentum and layer-wise adaptive rate scaling (You, Gitman & Ginsburg,
  2017), the optimiser the paper uses for pre-training. Parameter groups flagged
  ``{"lars_exclude": True}`` (normalisation weights and biases, see :func:`SinusAnomalyLib.models.parameter_groups`) get
  plain momentum SGD: no weight decay and no trust-ratio scaling.
* :func:`scaled_lr` — the linear learning-rate scaling rule (the paper: 0.2 at batch 256).
* :class:`WarmupCosine` — linear warm-up then cosine decay, stepped once per optimisation step,
  clamped at its final value after ``total_steps``.
* :func:`lars_with_warmup_cosine` — the two together, as every pretraining method uses them.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LRScheduler

from SinusAnomalyLib.errors import InvalidValueError
from SinusAnomalyLib.models import parameter_groups

__all__ = ["LARS", "scaled_lr", "WarmupCosine", "lars_with_warmup_cosine"]


class LARS(torch.optim.Optimizer):
    r"""Momentum SGD with layer-wise adaptive rate scaling (LARS).

    Every parameter tensor ``w`` (a "layer") with gradient ``g`` in a group with learning rate
    :math:`\gamma_t` (the scheduled, global rate), momentum :math:`\mu`, weight decay
    :math:`\lambda` and trust coefficient :math:`\eta` is updated as

    .. math::

        d &= g + \lambda w \\
        r &= \begin{cases}
              \eta \, \lVert w \rVert / (\lVert g \rVert + \lambda \lVert w \rVert)
                  & \text{if } \lVert w \rVert > 0 \text{ and } \lVert g \rVert > 0 \\
              1 & \text{otherwise}
             \end{cases} \\
        v &\leftarrow \mu v + r\, d \qquad (v = r\, d \text{ at the first step}) \\
        w &\leftarrow w - \gamma_t v

    (norms are Euclidean norms over the whole tensor). The local rate ``r`` is the trust ratio of
    You et al. (2017); the global rate multiplies the momentum buffer, as in
    :class:`torch.optim.SGD`, so a learning-rate schedule acts on the whole update.

    For a group with ``lars_exclude=True`` both the weight decay and the trust ratio are skipped
    (``d = g``, ``r = 1``): plain momentum SGD. Use it for BatchNorm weights and all biases, whose
    scale is not meaningful to decay or to normalise (:func:`SinusAnomalyLib.models.parameter_groups` builds the two
    groups).

    Args:
        params: parameters or parameter groups (dicts; a group may set ``lars_exclude``).
        lr: global learning rate (usually driven by a scheduler).
        momentum: momentum factor (0.9 in the paper's setting).
        weight_decay: L2 weight decay of non-excluded groups.
        eta: trust coefficient.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        eta: float = 0.001,
    ):
        if not lr >= 0.0:
            raise InvalidValueError(f"invalid learning rate {lr}")
        if not 0.0 <= momentum < 1.0:
            raise InvalidValueError(f"invalid momentum {momentum}")
        if not weight_decay >= 0.0:
            raise InvalidValueError(f"invalid weight decay {weight_decay}")
        if not eta > 0.0:
            raise InvalidValueError(f"invalid trust coefficient {eta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            exclude = bool(group.get("lars_exclude", False))
            weight_decay = 0.0 if exclude else group["weight_decay"]
            eta = group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                d = g.add(p, alpha=weight_decay) if weight_decay != 0.0 else g.clone()
                if not exclude:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = eta * w_norm / (g_norm + weight_decay * w_norm)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    d.mul_(ratio)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = d
                    state["momentum_buffer"] = buf
                else:
                    buf.mul_(momentum).add_(d)
                p.add_(buf, alpha=-lr)
        return loss


def scaled_lr(base_lr: float, batch_size: int, base_batch: int = 256) -> float:
    """Linear scaling rule: the learning rate for ``batch_size`` given ``base_lr`` at ``base_batch``.

    ``scaled_lr(0.2, 256) == 0.2`` (the paper's setting); ``scaled_lr(0.2, 64) == 0.05``.
    """
    if batch_size <= 0 or base_batch <= 0:
        raise InvalidValueError(f"batch sizes must be positive (got batch_size={batch_size}, base_batch={base_batch})")
    if base_lr < 0:
        raise InvalidValueError(f"invalid base learning rate {base_lr}")
    return base_lr * batch_size / base_batch


class WarmupCosine(LRScheduler):
    r"""Linear warm-up to each group's base rate, then cosine decay to ``final_lr``.

    Step it ONCE per optimisation step (after ``optimizer.step()``). With ``t`` the number of
    ``step()`` calls so far (``t = 0`` for the first optimisation step), ``W = warmup_steps`` and
    ``T = total_steps``, the rate of a group with base rate ``b`` is

    * ``b * (t + 1) / W`` for ``t < W`` (reaches ``b`` at the last warm-up step);
    * ``final + (b - final) * (1 + cos(pi * (t - W) / (T - W))) / 2`` for ``W <= t <= T``;
    * ``final`` for ``t >= T`` (clamped: the cosine never comes back up).

    Compute ``total_steps`` from the real loader, e.g. ``len(train_loader) * epochs``
    (:meth:`for_loader` does this), never from a hard-coded steps-per-epoch. The schedule state
    (step count, base rates, lengths) is in :meth:`state_dict` and round-trips for resuming.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 final_lr: float = 0.0, last_epoch: int = -1):
        warmup_steps, total_steps = int(warmup_steps), int(total_steps)
        if total_steps <= 0:
            raise InvalidValueError(f"total_steps must be positive (got {total_steps})")
        if not 0 <= warmup_steps <= total_steps:
            raise InvalidValueError(f"warmup_steps must be in [0, total_steps={total_steps}] (got {warmup_steps})")
        if final_lr < 0:
            raise InvalidValueError(f"final_lr must be non-negative (got {final_lr})")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.final_lr = float(final_lr)
        super().__init__(optimizer, last_epoch)

    @classmethod
    def for_loader(cls, optimizer: torch.optim.Optimizer, loader, epochs: int, warmup_epochs: float,
                   final_lr: float = 0.0) -> "WarmupCosine":
        """A schedule over ``epochs`` epochs of ``loader`` (``len(loader)`` steps each)."""
        steps_per_epoch = len(loader)
        if steps_per_epoch <= 0:
            raise InvalidValueError("the training loader yields no batches")
        total = steps_per_epoch * int(epochs)
        warmup = min(total, int(round(steps_per_epoch * warmup_epochs)))
        return cls(optimizer, warmup, total, final_lr)

    def lr_at(self, step: int, base_lr: float) -> float:
        """The rate of a group with base rate ``base_lr`` at optimisation step ``step``."""
        w, t_total = self.warmup_steps, self.total_steps
        if step < w:
            return base_lr * (step + 1) / w
        if step >= t_total:
            return self.final_lr
        progress = (step - w) / (t_total - w)
        return self.final_lr + (base_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        step = max(self.last_epoch, 0)
        return [self.lr_at(step, float(base)) for base in self.base_lrs]


def lars_with_warmup_cosine(model: torch.nn.Module, cfg, global_batch: int, train_loader) -> tuple[LARS, WarmupCosine, float]:
    """The pretraining optimiser of every method: LARS at ``cfg.base_lr`` scaled to the global batch
    (summed over the processes: the paper's 0.2 at 256 on any number of GPUs), warm-up then cosine,
    stepped per batch; ``cfg`` a :class:`~SinusAnomalyTraining.config.PretrainSettings`.
    Returns ``(optimizer, scheduler, learning rate)``."""
    lr = scaled_lr(cfg.base_lr, global_batch, cfg.base_batch)
    optimizer = LARS(parameter_groups(model, cfg.weight_decay), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = WarmupCosine.for_loader(optimizer, train_loader, cfg.epochs, cfg.warmup_epochs)
    return optimizer, scheduler, lr
