"""The deterministic fake engine: text from a fixed vocabulary, configurable memory, timing and faults."""
