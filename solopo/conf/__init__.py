"""solopo's Hydra configs. A package, so that the console scripts (solopo-train, solopo-eval) find them as
pkg://solopo.conf wherever solopo is installed; `python -m solopo.run` finds the same folder beside run.py."""
