"""zeroth: reinforcement learning on verifiable rewards, R1-Zero style, readable end to end."""

__version__ = "0.1.0"
