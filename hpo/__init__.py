"""Hyperparameter optimisation for Faithful-SAE debiasing."""

__version__ = "0.1.0"
