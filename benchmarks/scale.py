"""Scale: LIVECell-sized data sets, images past memory on Dask blocks, and an
ensemble's peak memory.

    python benchmarks/scale.py NAME [ARGS]     (no NAME: the list; NAME --help: its arguments)
"""

import harness

if __name__ == "__main__":
    harness.run_suite("scale", __doc__)
