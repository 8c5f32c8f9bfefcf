"""The learning suite: experiments that chose a default, kept so each table of
docs/learning.md can be measured again (levers, heads, ensembles, dense fields, ...).

    python benchmarks/learning.py NAME [ARGS]  (no NAME: the list; NAME --help: its arguments)
"""

import harness

if __name__ == "__main__":
    harness.run_suite("learning", __doc__)
