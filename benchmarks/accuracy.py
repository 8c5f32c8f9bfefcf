"""Accuracy on real data: the built-ins beside Cellpose, transfer to a lab held out,
a few labelled images of a new lab, real nuclei beside Otsu, the original's ensemble.

    python benchmarks/accuracy.py NAME [ARGS]  (no NAME: the list; NAME --help: its arguments)
"""

import harness

if __name__ == "__main__":
    harness.run_suite("accuracy", __doc__)
