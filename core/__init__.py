"""The pure limiting engine: rules, clocks as values, counters, algorithms, the client table, the ring."""
