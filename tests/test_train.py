import pytest
import torch

from playbook.train import (CheckpointError, ModelConfig, TrainConfig, cache_key, evaluate, load_checkpoint,
                            train_or_load)


def test_training_learns_digits_and_is_cached(digits, isolated):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    model, first = train_or_load(ModelConfig("resnet", {"width": 8}), digits, cfg, progress=False)
    assert not first.from_cache and len(first.history) == 3
    metrics = evaluate(model, digits, digits.test)
    assert metrics.top1 > 80.0  # chance is 10%
    assert metrics.top5 >= metrics.top1
    assert sum(map(sum, metrics.confusion)) == len(digits.test)
    again, second = train_or_load(ModelConfig("resnet", {"width": 8}), digits, cfg, progress=False)
    assert second.from_cache and second.checkpoint == first.checkpoint
    x = digits.to_tensor(digits.test.images[:8])
    assert torch.equal(model(x), again(x))


def test_cache_key_depends_on_config(digits):
    m = ModelConfig("resnet", {"width": 8})
    assert cache_key(m, digits, TrainConfig(epochs=1)) != cache_key(m, digits, TrainConfig(epochs=2))
    assert cache_key(m, digits, TrainConfig(device="cpu")) == cache_key(m, digits, TrainConfig(device="auto"))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, digits):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt or not a weights-only torch file"):
        train_or_load(ModelConfig("resnet", {"width": 8}), digits, TrainConfig(epochs=0), checkpoint=str(bad))
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"nope": torch.zeros(1)}}, wrong)
    from playbook.models import create_model

    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(create_model("resnet", 10, 1, width=8), wrong)


def test_invalid_train_config_names_the_field():
    from playbook.config import ConfigError

    with pytest.raises(ConfigError, match=r"device='tpu' is not valid; choose one of"):
        TrainConfig(device="tpu")


def test_cache_key_changes_when_the_architecture_changes(digits):
    from playbook.train import architecture_signature, build_model

    m, t = ModelConfig("resnet", {"width": 8}), TrainConfig(epochs=1)
    narrow = architecture_signature(build_model(m, digits))
    wide = architecture_signature(build_model(ModelConfig("resnet", {"width": 12}), digits))
    assert cache_key(m, digits, t, narrow) != cache_key(m, digits, t, wide)
    assert cache_key(m, digits, t) == cache_key(m, digits, t, narrow)


def test_fit_restores_the_thread_count_and_skips_frozen_parameters(digits):
    from playbook.train import fit

    before = torch.get_num_threads()
    model = build_model_for(digits)
    frozen = model.stem[0].weight.detach().clone()
    model.stem[0].weight.requires_grad_(False)
    result = fit(model, digits, TrainConfig(steps=5, batch_size=32, lr=0.05, threads=1, schedule="cosine",
                                            validate=False), progress=False)
    assert torch.get_num_threads() == before
    assert result.steps == 5 and len(result.losses) == 5
    assert torch.equal(model.stem[0].weight, frozen)


def build_model_for(digits):
    from playbook.train import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig("resnet", {"width": 8}), digits)


def test_the_first_checkpoint_written_wins_and_a_late_trainer_takes_its_weights(digits, tmp_path):
    """Two runs sharing a cache train the same key at once: the file the first one wrote (and may already have
    recorded by its SHA-256) is never replaced; the second one continues with the cached weights."""
    from playbook.records import sha256_path
    from playbook.train import build_model, save_checkpoint

    m = ModelConfig("resnet", {"width": 8})
    first, other = build_model(m, digits), build_model(m, digits)
    torch.nn.init.constant_(next(other.parameters()), 0.5)
    path = tmp_path / "key.pt"
    assert save_checkpoint(first, path, {"history": []}) is True
    digest = sha256_path(path)
    assert save_checkpoint(other, path, {"history": []}) is False
    assert sha256_path(path) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["key.pt"]  # no temp left
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05)
    model, result = train_or_load(m, digits, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert not result.from_cache and result.checkpoint_sha256 == sha256_path(result.checkpoint)
    again, cached = train_or_load(m, digits, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert cached.from_cache and cached.checkpoint_sha256 == result.checkpoint_sha256
