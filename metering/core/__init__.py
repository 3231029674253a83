"""The pure core: decoding events, meters, calendar periods, subscriptions, the batch plan and
the account state read back from a store. Plain functions over plain typed data; no I/O,
and time is always passed in."""
