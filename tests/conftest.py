"""Tests run on the CPU, offline: wandb is disabled unless a test sets its own mode."""

import pytest


@pytest.fixture(autouse=True)
def _wandb_disabled(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
