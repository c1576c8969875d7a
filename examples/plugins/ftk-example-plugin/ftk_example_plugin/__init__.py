"""An example ftk plugin: everything ftk sees of it is the three hook implementations below.

ftk imports this module because ``pyproject.toml`` names it in the ``ftk.plugins`` entry-point
group, then calls the functions marked ``@hookimpl`` by their hook's name.  Each one asks only
for the arguments it needs (``register``, ``cfg``); the full list of hooks, with a line on when
each is called, is ``ftk/core/hookspecs.py``.
"""

from __future__ import annotations

from ftk.core.callbacks import TrainerCallback
from ftk.core.config.schema import FtkConfig
from ftk.core.hookspecs import hookimpl
from ftk.core.registry import Register
from ftk_example_plugin import qa_pairs
from ftk_example_plugin.step_log import SECTION, ExampleSection, StepLogCallback


@hookimpl
def register_prompt_strategies(register: Register) -> None:
    """Offer ``type: qa_pairs`` to datasets; its options model validates the dataset's own keys."""
    register("qa_pairs", qa_pairs.build, qa_pairs.QaPairsOptions)


@hookimpl
def register_config_sections(register: Register) -> None:
    """Allow an ``example:`` section in configs, validated by ``ExampleSection``."""
    register(SECTION, ExampleSection)


@hookimpl
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """Add the step log to runs whose config has an ``example:`` section; other runs are untouched."""
    section = cfg.section(SECTION)
    if section is None:
        return []
    return [StepLogCallback(cfg.output_dir, section.log_every)]
