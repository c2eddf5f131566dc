"""`t2i-audit reproduce`: the paper's evaluation (Figures 6 and 7, Tables 1 and 2) on the tiny zoo."""

__all__ = ["experiment", "paper", "report", "run", "scales"]
