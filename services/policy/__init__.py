"""The policy toolkit: YAML with line numbers, strict fields, errors, durations and the
``Kind`` protocol every service implements. It imports nothing above it."""
