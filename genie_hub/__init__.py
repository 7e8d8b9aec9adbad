"""genie_hub: zero-shot quantization of Hugging Face vision models with Genie (Jeon et al., CVPR 2023).

The package reads as the pipeline (docs/architecture.md): `adapters`/`loading` (model, processor, input spec)
-> `synthesis` (Genie-D, returns a `Calibration`) -> `quantization` (Genie-M, returns a `QuantizationResult`)
-> `checkpoint` (packed safetensors, transformers integration) -> `hub` (publishing) -> `space` (the
comparison app). `pipeline` chains them for the CLI.

    import genie_hub
    model, processor = genie_hub.load_model("microsoft/resnet-50")
    config = genie_hub.GenieConfig.from_profile("paper", weight_bits=4, act_bits=4)
    calibration = genie_hub.synthesize(model, config, processor=processor)
    result = genie_hub.quantize(model, calibration, config)
    genie_hub.save_quantized(result, "resnet-50-genie-w4a4", processor=processor)
    reloaded = genie_hub.from_pretrained("resnet-50-genie-w4a4")  # or AutoModelForImageClassification
"""

__version__ = "0.1.0"
REPOSITORY_URL = "https://github.com/genie-hub/genie_hub"
"""Where genie_hub lives: the cards link it, and pyproject.toml's [project.urls] name the same place."""

from .checkpoint import register as _register_checkpoint_format  # noqa: E402

_register_checkpoint_format()  # AutoModelForImageClassification.from_pretrained now reads genie checkpoints

from .adapters import InputSpec  # noqa: E402
from .api import (Calibration, QuantizationResult, from_pretrained, input_spec, load_model, open_image,  # noqa: E402
                  quantize, save_quantized, synthesize, verify_checkpoint)
from .checkpoint import GenieQuantizationConfig  # noqa: E402
from .config import GenieConfig, LayerBits  # noqa: E402
from .errors import (CheckpointError, ConfigError, DataError, GenieError, ModelLoadError,  # noqa: E402
                     NoBatchNormError, PushError, ReconstructionDivergedError)

__all__ = ["Calibration", "CheckpointError", "ConfigError", "DataError", "GenieConfig", "GenieError",
           "GenieQuantizationConfig", "InputSpec", "LayerBits", "ModelLoadError", "NoBatchNormError", "PushError",
           "QuantizationResult", "ReconstructionDivergedError", "__version__", "from_pretrained", "input_spec",
           "load_model", "open_image", "quantize", "save_quantized", "synthesize", "verify_checkpoint"]
