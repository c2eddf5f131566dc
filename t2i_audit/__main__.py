"""`python -m t2i_audit`: the same as the `t2i-audit` console script."""

from t2i_audit import main_entry

main_entry()
