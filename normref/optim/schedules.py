r"""Learning-rate schedules: step decay, cosine decay, linear warmup, and their compositions.

A schedule is a function of the step count :math:`t = 0, 1, 2, \dots` that returns a *multiplier* of the base
learning rate; :class:`LRScheduler` applies it to an optimizer, ``optimizer.lr = base_lr · schedule(t)``.
Whether a "step" is one iteration or one epoch is the caller's choice (call :meth:`LRScheduler.step` accordingly).

=====================================  =================================================================================
``Constant(c)``                        :math:`c`
``StepDecay(s, γ)``                    :math:`\gamma^{\lfloor t/s \rfloor}` (PyTorch ``StepLR``)
``MultiStepDecay([m_1, …], γ)``        :math:`\gamma^{\#\{i:\ m_i \le t\}}` (PyTorch ``MultiStepLR``)
``CosineDecay(T, f)``                  :math:`f + (1-f)\,\tfrac12\,(1 + \cos(\pi \min(t,T)/T))`: 1 at 0, :math:`f` from
                                       :math:`T` on (PyTorch ``CosineAnnealingLR`` without restarts, ``f = η_min/η``)
``LinearWarmup(W, s)``                 :math:`s + (1-s)\min(t,W)/W`: :math:`s` at 0, 1 from :math:`W` on (PyTorch
                                       ``LinearLR(start_factor=s, total_iters=W)``)
``a * b``                              :math:`a(t)\,b(t)`
``Chain([a, b, …], [m_1, …])``         :math:`a(t)` for :math:`t < m_1`, then :math:`b(t - m_1)` until :math:`m_2`, …
                                       (PyTorch ``SequentialLR``: each stage restarts its own count)
=====================================  =================================================================================

Warmup then cosine over ``T`` steps in all: ``Chain([LinearWarmup(W), CosineDecay(T - W)], [W])``.
"""

from __future__ import annotations

import bisect
import math
import numbers

from .optimizer import Optimizer, check_nonneg, check_real


def _check_step(t) -> int:
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"step must be an int, got {type(t).__name__}")
    if t < 0:
        raise ValueError(f"step must be >= 0, got {t}")
    return int(t)


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def _check_milestones(milestones, name: str) -> list[int]:
    values = [_check_count(m, f"{name}[{i}]") for i, m in enumerate(milestones)]
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {values}")
    return values


class Schedule:
    """A learning-rate multiplier as a function of the step count; ``a * b`` multiplies two schedules."""

    def __call__(self, t: int) -> float:
        return self.factor(_check_step(t))

    def factor(self, t: int) -> float:
        raise NotImplementedError

    def __mul__(self, other: "Schedule") -> "Schedule":
        if not isinstance(other, Schedule):
            return NotImplemented
        return Product(self, other)


class Constant(Schedule):
    """``c`` at every step (default 1)."""

    def __init__(self, c=1.0):
        self.c = check_nonneg(c, "c")

    def factor(self, t):
        return self.c

    def __repr__(self):
        return f"Constant({self.c})"


class StepDecay(Schedule):
    """``gamma ** (t // step_size)``.

    Examples:
        >>> [StepDecay(2, 0.5)(t) for t in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, step_size, gamma=0.1):
        self.step_size = _check_count(step_size, "step_size")
        self.gamma = check_nonneg(gamma, "gamma")

    def factor(self, t):
        return self.gamma ** (t // self.step_size)

    def __repr__(self):
        return f"StepDecay({self.step_size}, gamma={self.gamma})"


class MultiStepDecay(Schedule):
    """``gamma ** (number of milestones <= t)``."""

    def __init__(self, milestones, gamma=0.1):
        self.milestones = _check_milestones(milestones, "milestones")
        self.gamma = check_nonneg(gamma, "gamma")

    def factor(self, t):
        return self.gamma ** bisect.bisect_right(self.milestones, t)

    def __repr__(self):
        return f"MultiStepDecay({self.milestones}, gamma={self.gamma})"


class CosineDecay(Schedule):
    """Half a cosine from 1 at ``t = 0`` down to ``final_factor`` at ``t = total_steps``, constant afterwards.

    Examples:
        >>> s = CosineDecay(4, final_factor=0.2)
        >>> [round(s(t), 6) for t in (0, 2, 4, 9)]
        [1.0, 0.6, 0.2, 0.2]
    """

    def __init__(self, total_steps, final_factor=0.0):
        self.total_steps = _check_count(total_steps, "total_steps")
        self.final_factor = check_nonneg(final_factor, "final_factor")

    def factor(self, t):
        progress = min(t, self.total_steps) / self.total_steps
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self):
        return f"CosineDecay({self.total_steps}, final_factor={self.final_factor})"


class LinearWarmup(Schedule):
    """Linear ramp from ``start_factor`` at ``t = 0`` to 1 at ``t = warmup_steps``, 1 afterwards (PyTorch
    ``LinearLR``'s default ``start_factor = 1/3``).

    Examples:
        >>> [round(LinearWarmup(4, start_factor=0.2)(t), 6) for t in range(6)]
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    """

    def __init__(self, warmup_steps, start_factor=1.0 / 3.0):
        self.warmup_steps = _check_count(warmup_steps, "warmup_steps")
        self.start_factor = check_real(start_factor, "start_factor")
        if not 0.0 <= self.start_factor <= 1.0:
            raise ValueError(f"start_factor must lie in [0, 1], got {self.start_factor}")

    def factor(self, t):
        return self.start_factor + (1.0 - self.start_factor) * min(t, self.warmup_steps) / self.warmup_steps

    def __repr__(self):
        return f"LinearWarmup({self.warmup_steps}, start_factor={self.start_factor})"


class Product(Schedule):
    """``a(t) · b(t)`` (what ``a * b`` builds)."""

    def __init__(self, a: Schedule, b: Schedule):
        self.a, self.b = a, b

    def factor(self, t):
        return self.a.factor(t) * self.b.factor(t)

    def __repr__(self):
        return f"({self.a!r} * {self.b!r})"


class Chain(Schedule):
    """Run ``schedules[i]`` between ``milestones[i-1]`` and ``milestones[i]``, each on its own step count (restarting
    at 0 when it takes over). ``len(milestones) == len(schedules) - 1``.

    Examples:
        >>> s = Chain([LinearWarmup(2, start_factor=0.0), CosineDecay(4)], [2])
        >>> [round(s(t), 6) for t in range(7)]
        [0.0, 0.5, 1.0, 0.853553, 0.5, 0.146447, 0.0]
    """

    def __init__(self, schedules, milestones):
        self.schedules = list(schedules)
        for i, s in enumerate(self.schedules):
            if not isinstance(s, Schedule):
                raise TypeError(f"schedules[{i}] must be a Schedule, got {type(s).__name__}")
        self.milestones = _check_milestones(milestones, "milestones")
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(f"Chain needs len(milestones) = len(schedules) - 1, got {len(self.milestones)} "
                             f"milestones for {len(self.schedules)} schedules")

    def factor(self, t):
        i = bisect.bisect_right(self.milestones, t)
        return self.schedules[i].factor(t - (self.milestones[i - 1] if i else 0))

    def __repr__(self):
        return f"Chain({self.schedules!r}, {self.milestones})"


class LRScheduler:
    """Apply a :class:`Schedule` to an optimizer: ``optimizer.lr = base_lr · schedule(t)``.

    ``base_lr`` is the optimizer's ``lr`` at construction; the multiplier for ``t = 0`` is applied at once, and each
    :meth:`step` advances ``t`` by one. :meth:`state_dict` / :meth:`load_state_dict` save and restore ``t`` and
    ``base_lr`` (and re-apply the learning rate), for checkpoint and resume.

    Examples:
        >>> from normref.nn import Linear
        >>> from normref.optim import SGD
        >>> opt = SGD(Linear(2, 2, rng=0), lr=0.1)
        >>> sched = LRScheduler(opt, StepDecay(1, gamma=0.5))
        >>> sched.step(); sched.step(); round(opt.lr, 6)
        0.025
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a normref.optim Optimizer, got {type(optimizer).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        self.optimizer, self.schedule = optimizer, schedule
        self.base_lr = float(optimizer.lr)
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        self.optimizer.lr = self.base_lr * self.schedule(self.last_step)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict[str, float | int]:
        return {"base_lr": self.base_lr, "last_step": self.last_step}

    def load_state_dict(self, state) -> None:
        self.base_lr = float(state["base_lr"])
        self.last_step = _check_step(int(state["last_step"]))
        self._apply()
