"""Any PEFT method as a trial: `method: peft` with `peft_config: {peft_type: OFT, r: 8, ...}`.

The mapping is PEFT's own config (what `peft.get_peft_config` takes), built by PEFT's config class
for `peft_type`, so every method PEFT ships (OFT, BOFT, VeRA, MiSS, SHiRA, LoHa, LoKr, IA3, ...)
runs with its own options. Its keys are searchable like fields, by the name `peft_config.KEY`:

    config:
      method: peft
      peft_config: {peft_type: OFT, module_dropout: 0.0}
    params:
      peft_config.r: {type: int, low: 4, high: 32, log: true}

Where the method takes `target_modules` and the mapping does not give them, the trial's
`target_modules` preset applies (mapped per architecture, as for LoRA). The methods are those of
METHODS below, by PEFT's upper-case name; the others are refused with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lorasweep.validation import ConfigError, did_you_mean

# The methods tried here (each trains and exports on the embedded world and user models): tuners
# of linear layers. Others need what lorasweep's loop does not do (AdaLoRA's rank allocation each
# step, X-LoRA's existing adapters), target no linear layer (LN tuning, trainable tokens), or
# prepend virtual tokens (prompt learning, adaption prompt).
METHODS = ("BOFT", "C3A", "FOURIERFT", "HRA", "IA3", "LOHA", "LOKR", "MISS", "OFT", "SHIRA", "VERA")
SET_BY_LORASWEEP = ("task_type", "inference_mode", "base_model_name_or_path", "revision")


def check(peft_config: Any) -> None:
    """A one-line ConfigError unless `peft_config` is a config PEFT builds for a causal LM."""
    if not isinstance(peft_config, dict) or not isinstance(peft_config.get("peft_type"), str):
        raise ConfigError(
            "field 'peft_config' needs a mapping with peft_type (one of PEFT's methods, e.g. OFT, VERA, MISS)"
        )
    build(peft_config, target_modules=None)


def build(peft_config: dict[str, Any], target_modules: list[str] | None) -> Any:
    """PEFT's config object for `peft_config`; `target_modules` (a preset's names) where the method
    takes them and the mapping gives none."""
    cls = check_keys(peft_config["peft_type"], peft_config)
    names = {f.name for f in dataclasses.fields(cls)}
    options = {k: v for k, v in peft_config.items() if k != "peft_type"}
    if "target_modules" in names and "target_modules" not in options and target_modules is not None:
        options["target_modules"] = target_modules
    try:
        return cls(task_type="CAUSAL_LM", **options)
    except Exception as err:  # noqa: BLE001 - whatever PEFT's class says of the options is the user's to fix
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"field 'peft_config': PEFT's {cls.__name__} refuses it: {first}") from None


def check_keys(peft_type: str, keys: Any) -> type:
    """PEFT's config class for `peft_type`, after a one-line ConfigError for the first of `keys`
    that is not one of its options (or is one lorasweep sets)."""
    cls = config_class(peft_type)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in keys:
        if key not in names or key in SET_BY_LORASWEEP:
            allowed = sorted(names - {"peft_type", *SET_BY_LORASWEEP})
            raise ConfigError(
                f"field 'peft_config.{key}' is not an option of PEFT's {cls.__name__}"
                f"{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})"
            )
    return cls


def config_class(peft_type: str) -> type:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    types = {str(t.value): cls for t, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    if peft_type not in METHODS or peft_type not in types:
        raise ConfigError(
            f"field 'peft_config.peft_type' is {peft_type!r}{did_you_mean(peft_type.upper(), METHODS)}; "
            f"allowed: {', '.join(m for m in METHODS if m in types)} (LoRA itself: method lora, rslora, "
            "dora or qlora)"
        )
    return types[peft_type]
