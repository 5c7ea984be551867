"""plasticity: the learner side of the Bayesian wind tunnel — models, the LightningModule, continual
strategies, metrics against the exact posterior, and the experiment driver (`plasticity.experiment.run`)."""

__version__ = "0.1.0"
