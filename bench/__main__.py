import sys

from bench.cli import main

if __name__ == "__main__":  # not when a spawned process (bench.stages) imports this module
    sys.exit(main())
