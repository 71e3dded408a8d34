"""Optimizers, learning-rate schedules, gradient clipping and weight-space regularizers for normref models.

Every optimizer is built on a :class:`~normref.nn.Module` and updates the parameters through the model's
``params``/``grads`` dicts by dotted name (see :mod:`normref.optim.optimizer` for the selection, update-by-assignment
and checkpoint conventions):

* :class:`SGD` (momentum, Nesterov, coupled weight decay), :class:`Adam`, :class:`AdamW`: PyTorch semantics;
* :class:`SGDP`, :class:`AdamP` (Heo et al. 2021): the update of scale-invariant weights is projected onto the
  tangent space, as the reference code does;
* schedules (:class:`StepDecay`, :class:`MultiStepDecay`, :class:`CosineDecay`, :class:`LinearWarmup`, products and
  :class:`Chain`) applied by :class:`LRScheduler`; :func:`clip_grad_norm` over all parameters;
* :class:`NormLoss` and :class:`Companded` (Weight Compander): regularizers whose exact published formulas could not
  be verified; :mod:`normref.optim.regularizers` says what is verified and what is reconstructed.
"""

from .adam import Adam, AdamW
from .adamp import AdamP, SGDP, cosine_rows, project_radial, projection
from .clip import clip_grad_norm, grad_norm
from .optimizer import Optimizer
from .regularizers import Companded, NormLoss, compander_backward, compander_forward, norm_loss
from .schedules import (Chain, Constant, CosineDecay, LinearWarmup, LRScheduler, MultiStepDecay, Product, Schedule,
                        StepDecay)
from .sgd import SGD

__all__ = [
    "Adam", "AdamP", "AdamW", "Chain", "Companded", "Constant", "CosineDecay", "LRScheduler", "LinearWarmup",
    "MultiStepDecay", "NormLoss", "Optimizer", "Product", "SGD", "SGDP", "Schedule", "StepDecay", "clip_grad_norm",
    "compander_backward", "compander_forward", "cosine_rows", "grad_norm", "norm_loss", "project_radial",
    "projection",
]
