"""Which quantization `from_pretrained` applies while loading a float checkpoint: transformers' QuantoConfig
(weights "int8" or "int4", no activations) or the shorthands load_in_8bit / load_in_4bit, all weight-only
round-to-nearest (rtn.py)."""

from dataclasses import dataclass
from typing import Optional

from transformers import QuantoConfig

from .rtn import GROUP

SUPPORTED = "QuantoConfig(weights='int8' or 'int4'), load_in_8bit=True or load_in_4bit=True (weight-only)"


@dataclass(frozen=True)
class WeightQuantization:
    bits: int
    modules_to_not_convert: tuple = ()
    config: Optional[QuantoConfig] = None

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    def converts(self, module_name: str) -> bool:
        """Whether the layer `module_name` is quantized (not named, even in part, in modules_to_not_convert, which
        transformers' quanto integration matches the same way)."""
        return not any(key in module_name for key in self.modules_to_not_convert)

    def check_shape(self, weight_name: str, shape: tuple) -> None:
        if shape[-1] % GROUP:
            raise ValueError(
                f"{self.name} quantizes in groups of {GROUP} input features, but '{weight_name}' has {shape[-1]}; "
                f"keep that layer in float with QuantoConfig(weights='{self.name}', modules_to_not_convert=[...])"
            )

    def bits_for(self, vocabulary: bool) -> int:
        """The embedding table and the LM head stay int8 under int4, as llama.cpp's 4-bit files keep them at 6 or 8
        bits: they hold a tenth to a third of a small model's weights, and at 4 bits they cost most of its accuracy
        (SmolLM2-135M: +7.0% perplexity with them at int4, +x% with them at int8)."""
        return 8 if vocabulary else self.bits


def weight_quantization(quantization_config=None, load_in_8bit: bool = False, load_in_4bit: bool = False,
                        gguf_file=None) -> Optional[WeightQuantization]:  # fmt: skip
    """The quantization requested through from_pretrained's arguments, or None; one-line errors for what is not
    supported."""
    if load_in_8bit and load_in_4bit:
        raise ValueError("load_in_8bit and load_in_4bit are both set; pass only one")
    if (load_in_8bit or load_in_4bit) and quantization_config is not None:
        raise ValueError("pass either quantization_config or load_in_8bit / load_in_4bit, not both")
    if load_in_8bit or load_in_4bit:
        quantization_config = QuantoConfig(weights="int8" if load_in_8bit else "int4")
    if quantization_config is None:
        return None
    if gguf_file is not None:
        raise ValueError("a GGUF file is quantized already: pass dequantize=False to keep its weights quantized, "
                         "not quantization_config / load_in_8bit / load_in_4bit")  # fmt: skip
    config = _as_quanto(quantization_config)
    if config.activations is not None:
        raise ValueError(f"activation quantization (activations={config.activations!r}) is not supported; supported: {SUPPORTED}")
    if config.weights not in ("int8", "int4"):
        raise ValueError(f"QuantoConfig(weights={config.weights!r}) is not supported; supported: {SUPPORTED}")
    return WeightQuantization(int(config.weights[3:]), tuple(config.modules_to_not_convert or ()), config)


def _as_quanto(quantization_config) -> QuantoConfig:
    if isinstance(quantization_config, dict):
        method = quantization_config.get("quant_method")
        if method != "quanto":
            raise ValueError(f"quantization_config with quant_method {method!r} is not supported; supported: {SUPPORTED}")
        return QuantoConfig.from_dict(quantization_config)
    if not isinstance(quantization_config, QuantoConfig):
        method = getattr(quantization_config, "quant_method", None)
        kind = f"{type(quantization_config).__name__} (quant_method {getattr(method, 'value', method)!r})"
        raise ValueError(f"quantization_config {kind} is not supported; supported: {SUPPORTED}")
    return quantization_config


def check_not_prequantized(config, path: str) -> None:
    """A checkpoint saved already quantized (GPTQ, AWQ, bitsandbytes, quanto...) has a quantization_config in its
    config.json and weights this loader cannot read."""
    existing = getattr(config, "quantization_config", None)
    if existing:
        method = existing.get("quant_method") if isinstance(existing, dict) else getattr(existing, "quant_method", None)
        raise ValueError(
            f"'{path}' holds weights already quantized with {getattr(method, 'value', method)!r}, which cannot be "
            "loaded here; load its float checkpoint and pass quantization_config=QuantoConfig(...) instead"
        )
