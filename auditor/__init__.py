"""t2i-auditor: injection-free training data attribution for text-to-image models.

Answers one forensic question for a model owner: was this suspicious model trained
on images that my model generated? (Zhang et al., 2024.)
"""

__version__ = "0.1.0"
