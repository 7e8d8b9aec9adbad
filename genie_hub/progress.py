"""Progress bars and console output the way the Hugging Face tools do them.

Every genie_hub bar is a `huggingface_hub.utils.tqdm` in the group "genie_hub", so HF_HUB_DISABLE_PROGRESS_BARS=1
and `huggingface_hub.utils.disable_progress_bars()` silence it like the Hub's own download bars. `quiet()` is
`genie_hub -q`: no bars and warnings only, from genie_hub, transformers, datasets and huggingface_hub alike;
with HF_HUB_DISABLE_PROGRESS_BARS=1 the CLI calls `disable_all_bars()`, so that one switch hides every bar.
`logs_above_bars()` routes log lines through `tqdm.write`, so they print above the bars instead of through them.

`projected_seconds` / `paper_cpu_warning` turn a measured synthesis step and forward+backward time into the
projected duration of a run (the warning when the paper profile starts on a CPU).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator

GROUP = "genie_hub"


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 disable: bool = False, leave: bool = True, unit: str = "it"):
    """A tqdm bar that honours HF_HUB_DISABLE_PROGRESS_BARS and `disable_progress_bars()` (huggingface_hub's tqdm)."""
    from huggingface_hub.utils import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=leave, unit=unit, dynamic_ncols=True,
                name=GROUP)


def bars_enabled() -> bool:
    from huggingface_hub.utils import are_progress_bars_disabled

    return not are_progress_bars_disabled(GROUP)


def disable_all_bars() -> None:
    """No progress bars from genie_hub, huggingface_hub, transformers or datasets (each has its own switch)."""
    import warnings

    from huggingface_hub.utils import disable_progress_bars

    with warnings.catch_warnings():  # an explicit HF_*_DISABLE_PROGRESS_BARS=0 has priority; the libraries warn
        warnings.simplefilter("ignore")
        disable_progress_bars()
        with contextlib.suppress(ImportError):
            import transformers

            transformers.logging.disable_progress_bar()
        with contextlib.suppress(ImportError):
            import datasets

            datasets.disable_progress_bars()


def quiet() -> None:
    """`genie_hub -q`: no progress bars, and only warnings and errors, from genie_hub and the HF libraries."""
    disable_all_bars()
    logging.getLogger("genie_hub").setLevel(logging.WARNING)
    # huggingface_hub's retry notices ("'...' thrown while requesting HEAD ..."): the error that follows, if any,
    # says what failed; a retry that succeeds needs no line.
    logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        import transformers

        transformers.logging.set_verbosity_error()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.logging.set_verbosity_error()


@contextlib.contextmanager
def logs_above_bars() -> Iterator[None]:
    """Log records of the root logger's console handlers are written with `tqdm.write` while this is active."""
    from huggingface_hub.utils import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.root], tqdm_class=tqdm):
        yield


def close_open_bars() -> None:
    """Close the bars an interruption left open, so that a closing message starts on a line of its own rather
    than after a half-drawn bar."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h', '31 h', '4.2 days' (two significant digits at most)."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    if hours < 48:
        return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"
    return f"{hours / 24:.1f} days"


def projected_seconds(*, num_samples: int, synthesis_iterations: int, reconstruction_steps: int,
                      reconstruction_batch_size: int, seconds_per_image: float,
                      synthesis_seconds_per_image: float) -> float:
    """Projected duration of a run from two timings: one synthesis step per image (0 for a run without
    synthesis) and one forward+backward pass per image of the whole model.

    Synthesis runs `synthesis_iterations` steps over every calibration image. Reconstruction runs
    `reconstruction_steps` steps per unit on `reconstruction_batch_size` images, and the units together make up
    the model once, so it costs about that many whole-model passes; fake quantization and the rounding
    regularizer roughly double it (2.8x and 3.6x on the tiny ViT and Swin test models, whose per-unit
    optimizer steps weigh more than a real model's). An estimate: data movement, evaluation and saving
    are not counted, and synthesis workers running batches in parallel make synthesis faster than this."""
    synthesis = num_samples * synthesis_iterations * synthesis_seconds_per_image
    reconstruction = 2.0 * reconstruction_steps * reconstruction_batch_size * seconds_per_image
    return synthesis + reconstruction


def paper_cpu_warning(projected: float) -> str:
    """The warning shown when the paper profile starts on a CPU."""
    return (f"The paper profile on this CPU: projected {format_duration(projected)} (an estimate from timed "
            "synthesis steps and a timed forward+backward pass). Use --profile quick, or a GPU "
            "(`accelerate launch -m genie_hub quantize ...`), for a run in minutes.")

