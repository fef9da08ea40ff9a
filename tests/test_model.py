import hashlib
import json
from pathlib import Path

import pytest

from sd_struct_rt.errors import UserError
from sd_struct_rt.families.sd1 import FAMILY
from sd_struct_rt.model import embedded_config_root, load_model, materialise, resolve_model_folder


def test_tokenizer_gives_the_clip_ids(tiny):
    ids = tiny.tokenizer("a red car and a white sheep").input_ids
    assert ids == [49406, 320, 736, 1615, 537, 320, 1579, 9629, 49407]


def _digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_materialising_twice_gives_identical_files(tmp_path):
    materialise(embedded_config_root("tiny"), tmp_path / "first")
    materialise(embedded_config_root("tiny"), tmp_path / "second")
    first, second = _digests(tmp_path / "first"), _digests(tmp_path / "second")
    assert any(name.endswith(".safetensors") for name in first)
    assert first == second


def test_tiny_loads_through_the_folder_loader(tiny):
    # The cached folder is an ordinary diffusers folder: loading it by path gives the same model.
    by_path = load_model(str(tiny.folder))
    assert by_path.unet.config == tiny.unet.config
    state, reference = by_path.unet.state_dict(), tiny.unet.state_dict()
    assert all((state[name] == reference[name]).all() for name in reference)
    assert type(by_path.scheduler).__name__ == "PNDMScheduler"
    assert by_path.scheduler.config.skip_prk_steps


def test_tiny_keeps_the_sd1_topology(tiny):
    cross_attention = [name for name, _ in tiny.unet.named_modules() if name.endswith("attn2")]
    assert len(cross_attention) == 16
    assert tiny.unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size
    assert tiny.vae_scale_factor == 8


def test_folder_without_a_unet_is_refused(tmp_path, tiny):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UserError, match="missing unet/config.json"):
        FAMILY.check_folder(tmp_path)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_folder(str(tmp_path / "nowhere"))


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot fetch model 'nobody/no-such-model'.*local diffusers-format folder"):
        resolve_model_folder("nobody/no-such-model")
