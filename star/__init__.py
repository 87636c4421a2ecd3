"""star: STaR (Self-Taught Reasoner) as a Hydra-configured, resumable experiment harness."""

__version__ = "0.1.0"
