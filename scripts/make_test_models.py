"""Build the test models into a cache folder (needs TensorFlow and scikit-learn).

    python scripts/make_test_models.py [OUTDIR] [--mobilenet] [--force]

OUTDIR defaults to $HYBRID_TEST_MODELS or .cache/test-models. Models already there and matching
the current recipe are kept; --force rebuilds them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", type=Path, default=models.cache_dir())
    parser.add_argument("--mobilenet", action="store_true", help="also MobileNetV2 fp16")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args()
    outdir: Path = args.outdir.resolve()
    if args.force and outdir.exists():
        shutil.rmtree(outdir)
    digits = models.ensure_digits_models(outdir)
    _, y = digits.data()
    for kind in models.DIGITS_KINDS:
        accuracy = float((digits.reference(kind).argmax(axis=1) == y).mean())
        print(f"{digits.model(kind)}: accuracy {accuracy:.3f} on {len(y)} held-out digits")
    if args.mobilenet:
        print(models.ensure_mobilenet_v2_fp16(outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
