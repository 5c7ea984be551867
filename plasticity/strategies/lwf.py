"""`lwf`: Learning without Forgetting (Li & Hoiem 2016, arXiv:1606.09282), as distillation from the model
as it was when the phase began (with Hinton et al.'s T² scaling, arXiv:1503.02531).

At each phase start a frozen copy of the model becomes the teacher; the loss gains
λ·T²·mean over scored tokens of KL(softmax(teacher/T) ‖ softmax(student/T)) over the whole vocabulary,
on the current batch's inputs. The T² keeps the gradient's scale independent of the temperature.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plasticity.strategies.base import Strategy, check_param, cpu_tensors, register
from streams.checks import is_number


def distill_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """Mean over masked positions of KL(softmax(teacher/T) ‖ softmax(student/T)), in nats."""
    log_t = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    log_s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


@register
class LwF(Strategy):
    name = "lwf"
    description = "learning without forgetting: distil from the model as it was at each phase start (Li & Hoiem 2016)"

    @dataclass
    class Params:
        lam: float = 1.0  # λ: weight of the distillation term against the task loss (both per token)
        temperature: float = 2.0  # T

    def check(self, p: Params) -> None:
        check_param(self.name, "lam", p.lam, is_number(p.lam) and p.lam >= 0, "a finite number >= 0")
        check_param(self.name, "temperature", p.temperature, is_number(p.temperature) and p.temperature > 0,
                    "a finite number > 0")

    def attach(self, module, stream, init_state) -> None:
        super().attach(module, stream, init_state)
        self.teacher = None

    def on_phase_start(self, module, phase: int) -> None:
        self._snapshot(module.model)

    def _snapshot(self, model) -> None:
        self.teacher = copy.deepcopy(model).eval()
        self.teacher.requires_grad_(False)

    def state_dict(self) -> dict:
        return {"teacher": None if self.teacher is None else cpu_tensors(self.teacher.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        if state["teacher"] is None:
            self.teacher = None
            return
        self._snapshot(self.module.model)  # the architecture; its weights are then the saved teacher's
        self.teacher.load_state_dict(state["teacher"])

    def penalty(self, module, batch, logits):
        if self.teacher is None or not batch.scored.any():
            return None
        with torch.no_grad():
            teacher_logits = self.teacher(batch.tokens)
        T = self.params.temperature
        return self.params.lam * T * T * distill_kl(teacher_logits, logits, batch.scored, T)
