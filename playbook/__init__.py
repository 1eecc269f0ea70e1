"""Core ML optimization playbook: the logic behind the stage notebooks (see README.md)."""

__version__ = "0.1.0"
