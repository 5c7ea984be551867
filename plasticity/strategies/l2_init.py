"""`l2_init`: regenerative regularization (Kumar, Marklund & Van Roy 2023, "Maintaining Plasticity in
Continual Learning via Regenerative Regularization", arXiv:2308.11958).

The loss gains λ·Σ(θ − θ₀)² over every parameter, θ₀ the model's random initialization (`target: init`,
the paper's choice: pulling toward the init keeps weights in the regime where they were trainable) or the
pretrained weights the arm started from (`target: start`, plain L2-SP-style anchoring).

λ multiplies a *sum* over all parameters, not a mean, so its effect grows with model size: 1e-3 is a
mild pull for the small models here (a transformer of ~10⁵ parameters, 0.02-scale deviations).
"""

from __future__ import annotations

from dataclasses import dataclass

from plasticity.strategies.base import Strategy, check_param, cpu_tensors, register
from streams.checks import is_number


@register
class L2Init(Strategy):
    name = "l2_init"
    description = "regenerative regularization toward the initial (or pretrained) weights (Kumar et al. 2023)"

    @dataclass
    class Params:
        lam: float = 1e-3  # λ, on the sum of squares (see above)
        target: str = "init"  # init: the random initialization | start: the weights the arm started from

    def check(self, p: Params) -> None:
        check_param(self.name, "lam", p.lam, is_number(p.lam) and p.lam >= 0, "a finite number >= 0")
        check_param(self.name, "target", p.target, p.target in ("init", "start"), "'init' or 'start'")

    def attach(self, module, stream, init_state) -> None:
        super().attach(module, stream, init_state)
        source = self.init_state if self.params.target == "init" else self.start_state
        missing = [n for n, _ in module.model.named_parameters() if n not in source]
        if missing:
            raise ValueError(f"strategy '{self.name}': target={self.params.target} has no weights for {missing[0]}")
        self.target = {n: source[n].to(p.device, p.dtype) for n, p in module.model.named_parameters()}

    # attach would rebuild the target, but only if it runs before the checkpoint's weights are loaded
    # (target: start): stored, so resume does not depend on that order.
    def state_dict(self) -> dict:
        return {"target": cpu_tensors(self.target)}

    def load_state_dict(self, state: dict) -> None:
        self.target = {n: state["target"][n].to(p.device, p.dtype) for n, p in self.module.model.named_parameters()}

    def penalty(self, module, batch, logits):
        return self.params.lam * sum((p - self.target[n]).pow(2).sum() for n, p in module.model.named_parameters())
