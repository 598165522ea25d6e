"""Hosts that drive the model: ASE today (``integrations.ase.TensorNetCalculator``). Each module
imports its host package, so import it only when that host is installed."""
