"""Read models over the store for people: what `metering account` shows (and, later, the
scorecard). Plain data out; the CLI formats it."""
