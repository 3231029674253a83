"""`python -m metering.cli` runs the command line (as the `metering` script does)."""

from metering.cli import main

main()
