"""Hosts that drive the model: ASE (``integrations.ase.TensorNetCalculator``) and OpenMM-ML
(``integrations.openmm``, ``MLPotential("tensornet_fast")``). Each module
imports its host package, so import it only when that host is installed."""
