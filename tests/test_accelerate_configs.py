"""The Accelerate launch configs shipped in configs/accelerate/ load with Accelerate's own reader (what
`accelerate launch --config_file` does) and say what their names promise. Running them is docs/train.md's record."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


@pytest.mark.parametrize("name,kind,check", [
    ("cpu-2proc.yaml", DistributedType.MULTI_GPU, lambda c: c.num_processes == 2 and c.mixed_precision == "no"),
    ("ddp.yaml", DistributedType.MULTI_GPU, lambda c: c.mixed_precision == "bf16"),
    ("fsdp.yaml", DistributedType.FSDP, lambda c: c.fsdp_config["fsdp_version"] == 2
     and c.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"),
    ("zero2.yaml", DistributedType.DEEPSPEED, lambda c: c.deepspeed_config["zero_stage"] == 2),
    ("zero3.yaml", DistributedType.DEEPSPEED, lambda c: c.deepspeed_config["zero_stage"] == 3
     and c.deepspeed_config["zero3_save_16bit_model"] is True),
])
def test_shipped_accelerate_configs_load(name, kind, check):
    cfg = load_config_from_file(str(CONFIGS / name))
    assert cfg.distributed_type == kind and check(cfg)


def test_every_shipped_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["cpu-2proc.yaml", "ddp.yaml", "fsdp.yaml", "zero2.yaml",
                                                               "zero3.yaml"]
