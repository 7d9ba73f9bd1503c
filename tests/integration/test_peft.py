"""A PEFT LoRA model: only the adapters train, and the adapters save and reload (as a
trainwright checkpoint and as PEFT's own adapter directory)."""

from __future__ import annotations

import pytest
import torch
from hf_models import ModelOutputLossTrainer, make_gpt2, make_token_dataset, model_output_loss
from peft import LoraConfig, PeftModel, get_peft_model

from trainwright.checkpointing import MODEL_STATE_KEY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LORA = dict(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True)


def make_lora_model(seed: int = 0) -> PeftModel:
    return get_peft_model(make_gpt2(seed), LoraConfig(**LORA))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_only_the_adapters_train_and_they_save_and_reload(tmp_path):
    model = make_lora_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    trainer = ModelOutputLossTrainer(model, model_output_loss, optimizer, callbacks=())
    trainer.train(make_token_dataset(16), num_epochs=2, per_device_batch_size=4)
    assert trainer.get_model() is model

    after = model.state_dict()
    changed = {name for name, value in after.items() if not torch.equal(value, before[name])}
    assert changed and all("lora_" in name for name in changed)  # the base model is frozen
    assert any("lora_A" in name for name in changed) and any("lora_B" in name for name in changed)

    trainer.save_checkpoint(tmp_path / "model.pt", save_optimizer=False)
    reloaded = make_lora_model(seed=1)
    reloaded.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True)[MODEL_STATE_KEY])
    model.save_pretrained(tmp_path / "adapter")  # the adapters only
    from_adapter = PeftModel.from_pretrained(make_gpt2(), tmp_path / "adapter")
    for name, value in after.items():
        assert torch.equal(reloaded.state_dict()[name], value)
        assert torch.equal(from_adapter.state_dict()[name], value)
