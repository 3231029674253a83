"""One module per trigger kind, each defining `KIND` (see `metering.triggers.kind`)."""
