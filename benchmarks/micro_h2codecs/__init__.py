"""HTTP/2 codec candidates measured in memory for issue 16 (benchmarks only; meshpy never imports this)."""
