"""Every example config validates, and the Qwen3 ones sit inside the advisor's recommended ranges.

The advisor judges settings from facts only a run knows (parameter count, MoE or not, steps, rows).
These tests measure the data facts for real: the bundled datasets are tokenized with Qwen's own BPE
(the tiny model's tokenizer, id for id the one Qwen3 uses) and packed as the trainer packs them;
the model facts are Qwen3's published sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.config.schema import FtkConfig
from ftk.core.data.packing import PackedBatchSampler
from ftk.core.data.pipeline import PreparedData, prepare_data
from ftk.plugins.advisor import optimizer_steps
from ftk.plugins.advisor.rules import RunFacts, evaluate

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))


@dataclass(frozen=True)
class Model:
    """What the advisor needs to know about a base model it cannot load here."""

    hub_name: str
    num_params: int
    moe: bool


QWEN3_0_6B = Model("Qwen/Qwen3-0.6B", 600_000_000, moe=False)
QWEN3_30B_A3B = Model("Qwen/Qwen3-30B-A3B", 30_500_000_000, moe=True)

# Example -> (model, GPU counts it is meant for).
QWEN3_EXAMPLES = {
    "qwen3-0.6b/lora.yaml": (QWEN3_0_6B, (1,)),
    "qwen3-0.6b/qlora.yaml": (QWEN3_0_6B, (1,)),
    "qwen3-0.6b/full.yaml": (QWEN3_0_6B, (1,)),
    "qwen3-0.6b/mix.yaml": (QWEN3_0_6B, (1,)),
    "qwen3-0.6b/zero2.yaml": (QWEN3_0_6B, (2, 4)),
    "qwen3-30b-a3b/moe-lora.yaml": (QWEN3_30B_A3B, (1,)),
}


def example_id(path: Path) -> str:
    return str(path.relative_to(REPO / "examples"))


def project_dir(path: Path) -> Path | None:
    """The example project (a folder with its own pyproject.toml) holding ``path``, if any."""
    for folder in path.parents:
        if folder == REPO:
            return None
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


@pytest.mark.parametrize("path", EXAMPLES, ids=[example_id(p) for p in EXAMPLES])
def test_every_example_validates_where_it_is_run(path, monkeypatch, capsys):
    """Configs run from the repo root; a config inside an example project runs from that project."""
    project = project_dir(path)
    if project is not None:  # its plugin must be installed (see tests/test_example_plugin.py)
        name = re.search(r'^name\s*=\s*"([^"]+)"', (project / "pyproject.toml").read_text(), re.M).group(1)
        try:
            distribution(name)
        except PackageNotFoundError:
            pytest.skip(f"{name} is not installed (pip install -e {project.relative_to(REPO)})")
    root = project or REPO
    monkeypatch.chdir(root)
    relative = str(path.relative_to(root))
    assert main(["validate", relative]) == 0
    assert f"{relative}: valid" in capsys.readouterr().out
    cfg, _ = load_config(relative)
    for dataset in cfg.datasets:
        assert (root / dataset.path).is_file(), dataset.path


def test_the_qwen3_examples_exist_and_are_what_their_names_say(monkeypatch):
    monkeypatch.chdir(REPO)
    assert set(QWEN3_EXAMPLES) <= {example_id(p) for p in EXAMPLES}
    configs = {name: load_config(REPO / "examples" / name)[0] for name in QWEN3_EXAMPLES}
    for name, (model, _) in QWEN3_EXAMPLES.items():
        assert configs[name].base_model == model.hub_name, name
        assert configs[name].output_dir.startswith("outputs/"), name
    assert configs["qwen3-0.6b/lora.yaml"].adapter == "lora"
    qlora = configs["qwen3-0.6b/qlora.yaml"]
    assert qlora.adapter == "qlora" and qlora.load_in_4bit is True
    assert configs["qwen3-0.6b/full.yaml"].adapter is None and configs["qwen3-0.6b/full.yaml"].bf16
    assert configs["qwen3-0.6b/full.yaml"].learning_rate <= 5e-5
    assert [(d.path, d.type) for d in configs["qwen3-0.6b/mix.yaml"].datasets] == [
        ("examples/data/sgd_chat_600.jsonl", "chat_template"),
        ("examples/data/arithmetic_alpaca.jsonl", "alpaca"),
    ]
    assert configs["qwen3-0.6b/zero2.yaml"].section("deepspeed").root == "zero2"
    moe = configs["qwen3-30b-a3b/moe-lora.yaml"]
    assert moe.adapter == "lora" and moe.lora_target_linear and moe.max_grad_norm <= 0.5
    assert "# router_aux_loss_coef:" in (REPO / "examples" / "qwen3-30b-a3b" / "moe-lora.yaml").read_text()


# --- the advisor, fed the facts of a real run --------------------------------------------------


@pytest.fixture(scope="module")
def prepare(tmp_path_factory):
    """``prepare(cfg)``: the config's data tokenized with Qwen's BPE and cached, once per data setting."""
    from ftk.plugins.tiny_model.builder import build_tokenizer

    tokenizer = build_tokenizer()
    cache_dir = tmp_path_factory.mktemp("prepared")
    prepared: dict[str, PreparedData] = {}

    def run(cfg: FtkConfig, registry) -> PreparedData:
        key = repr(([d.model_dump() for d in cfg.datasets], cfg.val_set_size, cfg.sequence_len, cfg.seed))
        if key not in prepared:
            cfg = cfg.model_copy(update={"dataset_prepared_path": str(cache_dir)})
            prepared[key] = prepare_data(cfg, tokenizer, registry)
        return prepared[key]

    return run


def run_facts(cfg: FtkConfig, model: Model, data: PreparedData, world_size: int) -> RunFacts:
    """The facts ``gather_facts`` would collect at the start of this run on ``world_size`` GPUs."""
    assert cfg.sample_packing
    lengths = data.train["length"]
    sampler = PackedBatchSampler(
        lengths, cfg.sequence_len, cfg.micro_batch_size, cfg.seed, world_size=world_size
    )
    num_steps, per_epoch = optimizer_steps(
        len(sampler), cfg.gradient_accumulation_steps, cfg.num_epochs, cfg.max_steps or -1
    )
    return RunFacts.from_config(
        cfg,
        num_params=model.num_params,
        moe=model.moe,
        num_steps=num_steps,
        train_rows=len(data.train),
        epochs=num_steps / per_epoch,
        world_size=world_size,
        longest_example=max(lengths),
        rows_read=sum(source.rows for source in data.sources),
        rows_over_length=sum(source.too_long + source.truncated for source in data.sources),
    )


CASES = [(name, gpus) for name, (_, counts) in QWEN3_EXAMPLES.items() for gpus in counts]


@pytest.mark.parametrize(("name", "gpus"), CASES, ids=[f"{n}-{g}gpu" for n, g in CASES])
def test_qwen3_example_gets_no_advisor_warning_before_training(name, gpus, prepare, monkeypatch):
    monkeypatch.chdir(REPO)
    model = QWEN3_EXAMPLES[name][0]
    cfg, manager = load_config(REPO / "examples" / name)
    assert cfg.section("advisor") is None  # no rule silenced: the settings themselves pass
    data = prepare(cfg, manager.collect_registrations())
    facts = run_facts(cfg, model, data, gpus)

    # The facts are those of a real-sized run: every learning-rate rule applies to it.
    assert not facts.small_model and facts.moe is model.moe
    assert facts.rows_read == sum(len((REPO / d.path).read_text().splitlines()) for d in cfg.datasets)
    assert facts.rows_over_length == 0
    assert evaluate("before", facts) == []
    # The run evaluates and saves a checkpoint at least once before it ends.
    assert cfg.eval_steps <= facts.num_steps and cfg.save_steps <= facts.num_steps


def test_the_moe_facts_reach_the_moe_rules(prepare, monkeypatch):
    """The MoE example passes because of its warmup and clipping, not because the rules are idle."""
    monkeypatch.chdir(REPO)
    path = REPO / "examples" / "qwen3-30b-a3b" / "moe-lora.yaml"
    cfg, manager = load_config(path, {"warmup_ratio": 0.01, "max_grad_norm": 1.0})
    facts = run_facts(cfg, QWEN3_30B_A3B, prepare(cfg, manager.collect_registrations()), 1)
    assert sorted(finding.rule for finding in evaluate("before", facts)) == ["moe_clipping", "moe_warmup"]
