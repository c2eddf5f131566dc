from auditor.cli import main_entry

main_entry()
