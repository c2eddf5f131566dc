"""`t2i-audit reproduce`: the paper's evaluation (Figures 6 and 7, Tables 1 and 2) on the tiny zoo, and the
verdict's studies (calibration, laundering), their distances tables and rescoring. Import the modules by name."""

__all__ = [
    "calibration_report",
    "calibration_study",
    "calibration_worlds",
    "candidates",
    "experiment",
    "laundering_report",
    "laundering_study",
    "paper",
    "records",
    "report",
    "rescore",
    "run",
    "scales",
]
