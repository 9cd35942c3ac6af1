"""The course harness above the library: puzzle experiments, the benchmark, results files, the
notebook runner, assignments and the machine description. No library module imports it."""
