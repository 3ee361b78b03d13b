"""python -m tinymodels [--root DIR]: build every demo model that is not built yet."""

import argparse
from pathlib import Path

from tinymodels import DEFAULT_ROOT, build_all

parser = argparse.ArgumentParser(prog="python -m tinymodels")
parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
print(f"demo models ready in {build_all(parser.parse_args().root)}")
