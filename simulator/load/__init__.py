"""Load-test harness: the ESME side of simulation, reporting throughput and latency percentiles."""
