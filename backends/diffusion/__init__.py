"""diffusers text-to-image pipelines: SD 1.x/2.x, SDXL, turbo-style."""
