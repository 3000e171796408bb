import sys

from locbench.cli.main import main

if (
    __name__ == "__main__"
):  # not when a spawned process (locbench.harness.stages) imports this module
    sys.exit(main())
