"""plasticity: the learner side of the Bayesian wind tunnel — models, continual strategies, training,
evaluation against the exact posterior, the experiment driver and its results (docs/architecture.md).
Run an experiment with `plasticity.entry.run(cfg)` or the `plasticity` command."""

__version__ = "0.1.0"
