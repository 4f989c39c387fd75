"""Command-line evaluation options on top of an experiment's ``evaluate:`` section.

``delineo evaluate`` accepts ``--aggregate mean_per_case,pooled``, ``--hd95 max_directed`` and
``--lesions off`` or ``--lesions connectivity=6,min_size=3,min_overlap=0.5,size_unit=ml``;
each is validated by the same schema as the experiment file, so a typo gets the same one-sentence
error naming the option.
"""

from __future__ import annotations

from typing import Any, Optional

import yaml
from pydantic import ValidationError

from delineo.config import EvaluateConfig
from delineo.errors import ConfigError


def evaluate_options(base: Optional[EvaluateConfig] = None, aggregate: Optional[str] = None,
                     lesions: Optional[str] = None, hd95: Optional[str] = None) -> EvaluateConfig:
    """``base`` (default settings when None) with the command-line options applied."""
    data: dict[str, Any] = (base or EvaluateConfig()).model_dump(mode="json")
    if aggregate is not None:
        data["aggregate"] = [a.strip() for a in aggregate.split(",") if a.strip()]
    if hd95 is not None:
        data["hd95"] = hd95
    if lesions is not None:
        text = lesions.strip()
        if text.lower() in ("off", "no", "false"):
            data["lesions"]["enabled"] = False
        elif text.lower() not in ("on", "yes", "true", ""):
            data["lesions"]["enabled"] = True
            for item in text.split(","):
                if "=" not in item:
                    raise ConfigError(f"--lesions {lesions}: expected 'off', 'on' or key=value pairs such as "
                                      "connectivity=6,min_size=3.")
                key, value = item.split("=", 1)
                key = key.strip().replace("-", "_")
                if key not in data["lesions"]:
                    raise ConfigError(f"--lesions: unknown setting '{key}'; valid: {', '.join(data['lesions'])}.")
                data["lesions"][key] = yaml.safe_load(value)
        else:
            data["lesions"]["enabled"] = True
    try:
        return EvaluateConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        place = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"evaluate option {place}: {err['msg']} (got {err.get('input')!r}).") from None
