"""Lightning callbacks: forgetting probes before/after training, ..."""
