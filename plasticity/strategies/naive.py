"""`naive`: plain online fine-tuning; `frozen`: weights never change after pretraining."""

from plasticity.strategies.base import Strategy


class Naive(Strategy):
    name = "naive"


class Frozen(Strategy):
    name = "frozen"
    frozen = True
