"""Settings: each group's dataclass holds its defaults and checks (``fields`` gives them one vocabulary);
``build`` turns the composed Hydra config into those objects and checks the rules that span several groups."""
