"""`naive`: plain online fine-tuning; `frozen`: weights never change after pretraining."""

from plasticity.strategies.base import Strategy, register


@register
class Naive(Strategy):
    name = "naive"
    description = "online fine-tuning: every batch updates the weights, nothing protects earlier phases"


@register
class Frozen(Strategy):
    name = "frozen"
    description = "weights never change after pretraining; the model adapts only in context"
    frozen = True
