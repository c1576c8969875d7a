"""Built-in plugin: the experiment trackers ``tensorboard`` and ``wandb``, with axolotl's switches.

``report_to: [tensorboard]`` (or ``use_tensorboard: true``) writes TensorBoard event files under
``output_dir/runs/``; ``report_to: [wandb]`` (or setting ``wandb_project``) logs to Weights &
Biases, its local files in ``output_dir/wandb/`` unless ``WANDB_DIR`` says otherwise.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import Field

from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl
from ftk.core.lifecycle import TRAINING

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from ftk.core.registry import Register

SECTION = "trackers"
#: tracker name -> (the package it needs, the pip extra that installs it).
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class TrackerSettings(StrictModel):
    """Top-level tracker keys (axolotl's names)."""

    use_tensorboard: bool = Field(False, description="Same as listing tensorboard in report_to.")
    wandb_project: str | None = Field(
        None, description="Weights & Biases project; setting it turns wandb on."
    )
    wandb_entity: str | None = Field(None, description="Weights & Biases entity (user or team).")
    wandb_name: str | None = Field(None, description="Weights & Biases run name.")
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="Weights & Biases mode; offline needs no network."
    )


def _wandb(cfg: FtkConfig) -> TrainerCallback:
    """transformers' W&B callback, starting the run with the config's project, entity, mode and name."""
    from transformers.integrations import WandbCallback

    class FtkWandbCallback(WandbCallback):
        """Starts the W&B run itself (``setup``), from the config's wandb_* keys."""

        def __init__(self, cfg: FtkConfig) -> None:
            super().__init__()
            self.settings: TrackerSettings = cfg.section(SECTION)
            self.output_dir = cfg.output_dir

        def setup(self, args: Any, state: Any, model: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero and self._wandb.run is None:
                settings = self.settings
                self._wandb.init(
                    project=settings.wandb_project or os.environ.get("WANDB_PROJECT", "huggingface"),
                    entity=settings.wandb_entity,  # None: wandb reads WANDB_ENTITY
                    mode=settings.wandb_mode,  # None: wandb reads WANDB_MODE
                    name=settings.wandb_name or args.run_name,
                    dir=os.environ.get("WANDB_DIR", self.output_dir),
                )
            super().setup(args, state, model, **kwargs)

    return FtkWandbCallback(cfg)


def _tensorboard(cfg: FtkConfig) -> TrainerCallback:
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback()


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add ``use_tensorboard`` and the ``wandb_*`` keys."""
    register(SECTION, TrackerSettings, flat=True)


#: tracker name -> the axolotl switch that turns it on without report_to.
SWITCHES = {
    "tensorboard": lambda cfg: cfg.section(SECTION).use_tensorboard,
    "wandb": lambda cfg: cfg.section(SECTION).wandb_project is not None,
}


@hookimpl
def register_trackers(register: Register) -> None:
    """Offer ``report_to: [tensorboard]`` and ``report_to: [wandb]``."""
    register("tensorboard", _tensorboard, enabled_by=SWITCHES["tensorboard"])
    register("wandb", _wandb, enabled_by=SWITCHES["wandb"])


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: the package of each tracker the run reports to is installed."""
    if purpose not in TRAINING:
        return
    wanted = set(cfg.report_to) | {name for name, switch in SWITCHES.items() if switch(cfg)}
    for name in sorted(wanted & set(PACKAGES)):
        package, extra = PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise FtkError(f"report_to: {name} needs {package}: pip install 'ftk[{extra}]'")
    if "wandb" in wanted:
        problem = wandb_login_problem(cfg.section(SECTION).wandb_mode or os.environ.get("WANDB_MODE"))
        if problem is not None:
            raise FtkError(problem)


def wandb_login_problem(mode: str | None, home: Path | None = None) -> str | None:
    """Why an online W&B run would stop at its start for want of an API key, or None.

    wandb reads the key from ``WANDB_API_KEY`` or from the netrc file that ``wandb login`` writes
    (``NETRC`` or ``~/.netrc``, entry of the W&B host); without either, ``wandb.init`` fails once the
    data are prepared and the model loaded.  Offline and disabled runs need no key.
    """
    if mode in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ["NETRC"]) if os.environ.get("NETRC") else (home or Path.home()) / ".netrc"
    try:
        if netrc.netrc(str(path)).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return (
        f"report_to: wandb logs online but no W&B API key is set (WANDB_API_KEY, or `wandb login`, "
        f"which writes {path}); set wandb_mode: offline to log locally"
    )
