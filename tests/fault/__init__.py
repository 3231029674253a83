"""The fault suite (issue 8): crash, restart, rebalance and hostile-input tests of SPEC 4."""
