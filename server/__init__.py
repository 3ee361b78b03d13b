"""The modelyard HTTP process: everything that is not running a model."""
