"""Code that runs inside model worker processes. Nothing here imports the HTTP layer."""
