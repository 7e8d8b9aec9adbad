"""genie_hub: zero-shot quantization of Hugging Face vision models with Genie (Jeon et al., CVPR 2023).

The story, one module each: `loading` (model + processor + input spec) -> `synthesis` (Genie-D) ->
`quantization` (Genie-M) -> `checkpoint` (packed safetensors, transformers integration) -> `hub`
(publishing) -> `space` (the comparison app). `pipeline` chains them for the CLI.

    import genie_hub
    model, processor = genie_hub.load_model("microsoft/resnet-50")
    config = genie_hub.GenieConfig.from_profile("paper", weight_bits=4, act_bits=4)
    images = genie_hub.synthesize(model, config, processor=processor)
    qmodel = genie_hub.quantize(model, images, config)
    genie_hub.save_quantized(qmodel, "resnet-50-genie-w4a4", processor=processor)
    reloaded = genie_hub.from_pretrained("resnet-50-genie-w4a4")  # or AutoModelForImageClassification
"""

__version__ = "0.1.0"

from .checkpoint import register as _register_checkpoint_format  # noqa: E402

_register_checkpoint_format()  # AutoModelForImageClassification.from_pretrained now reads genie checkpoints

from .checkpoint import GenieQuantizationConfig, save_quantized, verify_checkpoint  # noqa: E402
from .checkpoint import from_pretrained  # noqa: E402
from .config import GenieConfig, LayerBits  # noqa: E402
from .errors import (CheckpointError, ConfigError, GenieError, ModelLoadError, NoBatchNormError,  # noqa: E402
                     PushError, ReconstructionDivergedError)
from .loading import InputSpec, input_spec, load_model  # noqa: E402
from .quantization import quantize  # noqa: E402
from .synthesis import synthesize  # noqa: E402

__all__ = ["CheckpointError", "ConfigError", "GenieConfig", "GenieError", "GenieQuantizationConfig", "InputSpec",
           "LayerBits", "from_pretrained", "save_quantized", "verify_checkpoint",
           "ModelLoadError", "NoBatchNormError", "PushError", "ReconstructionDivergedError", "__version__",
           "input_spec", "load_model", "quantize", "synthesize"]
