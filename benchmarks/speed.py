"""Speed: what a prediction, a training step, a folder, a frame, the metric, the
post-processing and calibration cost, each beside the baseline its claim names.

    python benchmarks/speed.py NAME [ARGS]     (no NAME: the list; NAME --help: its arguments)
"""

import harness

if __name__ == "__main__":
    harness.run_suite("speed", __doc__)
