"""Reports over runs: run records and their grouping over seeds (runs), tables (tables), plots (plots), the sweep
report (sweep) and its command, `python -m solopo.report`. Generic: what belongs to one study lives with that study
under experiments/, which builds its own pages from these pieces."""
