"""One module per task family; importing this package registers them all."""
from streams.families import bijection, changepoint, dirichlet, hmm, recall  # noqa: F401

