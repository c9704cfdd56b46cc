"""The fine-tuning objective: L_task(θ) + λ·L_pre(θ) (+ β·½‖w_head‖² for L2-SP).

``L_task`` is cross-entropy on the new task, with optional label smoothing.
``L_pre`` keeps the model close to what it learned before, in one of two ways:

- ``l2sp`` (Li, Grandvalet, Davoine, "Explicit inductive bias for transfer learning
  with convolutional networks", ICML 2018): ``½‖w_S − w⁰_S‖²``, the squared distance
  of the shared (backbone) parameters to their pretrained values. The new head has no
  pretrained value, so it is excluded and gets plain L2 ``½‖w_head‖²`` with its own
  coefficient β (``head_lambda``) instead - the paper's Ω(w) = α/2‖w_S − w⁰_S‖² + β/2‖w_S̄‖²
  with α = λ. Sums over parameters, as in the paper: the pull on each weight is
  λ·(w − w⁰) whatever the size of the model.
- ``distill`` (as in Learning without Forgetting, Li & Hoiem 2016): ``T²·KL(p_T ‖ p_S)``
  between the frozen pretrained model's softened outputs ``p_T`` and the outputs the
  fine-tuned backbone gives through a frozen copy of the pretrained head ``p_S``, at
  temperature ``T``. It constrains what the features *do* rather than where the
  weights are.
- ``none``: ``L_pre = 0``.

Every term is returned separately so the trainer can log both L_task and L_pre.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LossTerms", "L2SP", "Distill", "FinetuneObjective"]


@dataclass
class LossTerms:
    """One step's loss and its parts (``pre`` and ``head`` before weighting)."""

    total: torch.Tensor
    task: torch.Tensor
    pre: torch.Tensor
    head: torch.Tensor


def _zero(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), device=like.device, dtype=torch.float32)


class L2SP:
    """½‖w_S − w⁰_S‖² over trainable non-head parameters, and ½‖w_head‖² over the head.

    ``reference`` maps parameter names to their pretrained values; without it the
    model's current parameters are snapshotted, which is right when the objective is
    built straight after loading the pretrained weights (and before resuming).
    """

    def __init__(self, model: nn.Module, head_prefix: str, reference: dict[str, torch.Tensor] | None = None) -> None:
        self.shared: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.head: list[nn.Parameter] = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith(head_prefix):
                self.head.append(param)
                continue
            ref = param.detach() if reference is None else reference[name]
            self.shared.append((param, ref.detach().to(device=param.device, dtype=torch.float32).clone()))
        if not self.shared and not self.head:
            raise ValueError("model has no trainable parameters")

    def penalty(self) -> torch.Tensor:
        """½ Σ ‖w − w⁰‖² over the shared parameters (0 at the pretrained weights)."""
        if not self.shared:
            return _zero(self.head[0])
        return 0.5 * sum(((p.float() - ref) ** 2).sum() for p, ref in self.shared)  # type: ignore[return-value]

    def head_penalty(self) -> torch.Tensor:
        """½ ‖w_head‖², the plain L2 on the new head."""
        if not self.head:
            return _zero(self.shared[0][0])
        return 0.5 * sum((p.float() ** 2).sum() for p in self.head)  # type: ignore[return-value]


class Distill:
    """T²·KL(teacher ‖ student-through-old-head), a frozen teacher, and a feature hook.

    The student's new head has the new task's classes, so its logits cannot be compared
    with the teacher's. A forward hook on the student's head records the features that
    enter it; a frozen copy of the teacher's head turns them into old-task logits.
    """

    def __init__(self, student: nn.Module, head_path: str, teacher: nn.Module, temperature: float = 2.0) -> None:
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.old_head = copy.deepcopy(teacher.get_submodule(head_path)).eval()
        for param in self.old_head.parameters():
            param.requires_grad_(False)
        self.temperature = float(temperature)
        self._features: torch.Tensor | None = None
        self._hook = student.get_submodule(head_path).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self._features = inputs[0]

    def penalty(self, images: torch.Tensor) -> torch.Tensor:
        """KL of the last student forward's old-task outputs to the teacher's on ``images``."""
        if self._features is None:
            raise RuntimeError("Distill.penalty needs a student forward pass first")
        with torch.no_grad():
            teacher_logits = self.teacher(images).float()
        student_logits = self.old_head(self._features).float()
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(student_logits / t, dim=-1),
            F.log_softmax(teacher_logits / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return kl * (t * t)

    def remove(self) -> None:
        self._hook.remove()


class FinetuneObjective:
    """L_task + λ·L_pre (+ β·head L2 for L2-SP), returning every term."""

    def __init__(
        self,
        reg: str = "none",
        reg_lambda: float = 0.0,
        head_lambda: float = 0.0,
        label_smoothing: float = 0.0,
        l2sp: L2SP | None = None,
        distill: Distill | None = None,
    ) -> None:
        if reg == "l2sp" and l2sp is None:
            raise ValueError("reg='l2sp' needs an L2SP term")
        if reg == "distill" and distill is None:
            raise ValueError("reg='distill' needs a Distill term")
        self.reg = reg
        self.reg_lambda = float(reg_lambda)
        self.head_lambda = float(head_lambda) if reg == "l2sp" else 0.0
        self.label_smoothing = float(label_smoothing)
        self.l2sp = l2sp if reg == "l2sp" else None
        self.distill = distill if reg == "distill" else None

    def task_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None = None) -> LossTerms:
        task = self.task_loss(logits, targets)
        pre = head = _zero(task)
        if self.l2sp is not None:
            pre = self.l2sp.penalty()
            head = self.l2sp.head_penalty()
        elif self.distill is not None:
            if images is None:
                raise ValueError("distill needs the input images")
            pre = self.distill.penalty(images)
        total = task + self.reg_lambda * pre + self.head_lambda * head
        return LossTerms(total=total, task=task, pre=pre, head=head)
