"""The training strategy's parts and the input pipeline, each on real objects: weight-decay
groups, LR schedules, EMA, samplers, augmentation seeding, initial weights, and
the distributed environment."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from modelops_trainer import storage
from modelops_trainer.config import Hyperparameters
from modelops_trainer.data import (
    RGB_MEAN,
    RGB_STD,
    EvalSampler,
    ImageSamples,
    Preprocess,
    TrainSampler,
    eval_transform,
    train_transform,
)
from modelops_trainer.datasetfmt import AugmentationPolicy, DatasetReader
from modelops_trainer.distributed import detect
from modelops_trainer.errors import DigestMismatch, DistributedError, WeightsError
from modelops_trainer.models import build_model, load_weights
from modelops_trainer.strategy import (
    WARMUP_START,
    build_ema,
    build_optimizer,
    build_scheduler,
    parameter_groups,
)

# --- optimizer and schedule --------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["resnet18", "vit_b_16", "convnext_tiny"])
def test_weight_decay_skips_norms_biases_and_embeddings(architecture):
    model = build_model(architecture, num_classes=10, in_channels=3, image_size=32)
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    norms = (nn.BatchNorm2d, nn.LayerNorm)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            skipped = id(p) in no_decay_ids
            if isinstance(module, norms) or name == "bias":
                assert skipped, f"{type(module).__name__}.{name} must not decay"
            elif isinstance(module, nn.Conv2d | nn.Linear) and name == "weight":
                assert not skipped, f"{type(module).__name__}.weight must decay"
    if architecture == "vit_b_16":
        embeddings = {id(model.encoder.pos_embedding), id(model.class_token)}
        assert embeddings <= no_decay_ids
    total = sum(1 for p in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == total


def _lrs(schedule, steps_per_epoch=10, **hp):
    hyper = Hyperparameters(epochs=3, learning_rate=0.1, lr_schedule=schedule, **hp)
    model = nn.Linear(4, 2)
    optimizer = build_optimizer(model, hyper)
    scheduler = build_scheduler(optimizer, hyper, steps_per_epoch)
    out = []
    for _ in range(3 * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_warms_up_linearly_then_decays_to_zero():
    lrs = _lrs("cosine", warmup_epochs=1.0)
    assert lrs[0] == pytest.approx(0.1 * WARMUP_START)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))  # rising through the warm-up
    assert lrs[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] < 0.1 * 0.01


def test_constant_holds_the_peak_after_warm_up_and_one_cycle_peaks_once():
    constant = _lrs("constant", warmup_epochs=0.5)
    assert constant[5:] == [pytest.approx(0.1)] * 25
    cycle = _lrs("oneCycle", warmup_epochs=1.0, optimizer="sgd")
    peak = cycle.index(max(cycle))
    assert peak in (9, 10) and max(cycle) == pytest.approx(0.1)  # torch peaks on the last warm-up step
    assert cycle[0] < 0.1 * 0.02 and cycle[-1] < 0.1 * 0.01


def test_schedules_survive_a_state_dict_round_trip():
    hyper = Hyperparameters(epochs=2, learning_rate=0.1)
    a_opt = build_optimizer(nn.Linear(4, 2), hyper)
    a = build_scheduler(a_opt, hyper, 5)
    for _ in range(3):
        a_opt.step()
        a.step()
    b_opt = build_optimizer(nn.Linear(4, 2), hyper)
    b = build_scheduler(b_opt, hyper, 5)
    b.load_state_dict(a.state_dict())
    b_opt.load_state_dict(a_opt.state_dict())
    for _ in range(4):
        a_opt.step()
        b_opt.step()
        a.step()
        b.step()
        assert a.get_last_lr() == b.get_last_lr()


def test_ema_follows_the_weights_with_its_decay():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = build_ema(model, 0.9)
    assert ema is not None and build_ema(model, 0.0) is None
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # the first update starts the average at the current weights
    assert ema.module.weight.flatten().tolist() == pytest.approx([1.0, 1.0])
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update_parameters(model)
    assert ema.module.weight.flatten().tolist() == pytest.approx([1.1, 1.1])  # 0.9 · 1 + 0.1 · 2


# --- samplers and augmentation -----------------------------------------------------------------


def test_train_sampler_shares_each_epoch_between_processes_and_resumes_mid_epoch():
    shares = []
    for rank in range(3):
        sampler = TrainSampler(100, rank=rank, world_size=3, seed=7)
        sampler.set_epoch(4)
        shares.append(list(sampler))
    indices = [i for share in shares for i, _ in share]
    assert len(indices) == 102 and set(indices) == set(range(100))  # padded to equal shares
    assert all(len(s) == 34 for s in shares)
    resumed = TrainSampler(100, rank=1, world_size=3, seed=7)
    resumed.set_epoch(4)
    resumed.start = 10
    assert list(resumed) == shares[1][10:] and len(resumed) == 24
    other_epoch = TrainSampler(100, rank=1, world_size=3, seed=7)
    other_epoch.set_epoch(5)
    assert list(other_epoch) != shares[1]


def test_eval_sampler_covers_every_sample_once():
    parts = [list(EvalSampler(10, rank=r, world_size=4)) for r in range(4)]
    assert sorted(i for p in parts for i in p) == list(range(10))


def test_augmentation_depends_only_on_the_sample_seed(tiny):
    reader = DatasetReader(tiny.uri, digest=tiny.digest)
    policy = AugmentationPolicy(
        random_resized_crop_scale=[0.3, 1.0], rotation_degrees=30, auto_augment="randAugment", random_erasing=0.5
    )
    samples = ImageSamples(reader.index("train"), reader.manifest.image, train_transform(policy, reader.manifest.image))
    first, _ = samples[(3, 12345)]
    torch.manual_seed(999)
    random.seed(999)
    state = torch.get_rng_state()
    again, label = samples[(3, 12345)]
    other, _ = samples[(3, 54321)]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), state), "seeding a sample must not disturb the training process"
    plain = ImageSamples(reader.index("train"), reader.manifest.image, eval_transform(reader.manifest.image))
    x, plain_label = plain[3]
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and plain_label == label
    assert torch.equal(plain[3][0], x)


def test_batches_are_normalised_on_the_device_as_the_card_says():
    batch = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    x, y = Preprocess("RGB", torch.device("cpu"), channels_last=True)((batch, torch.tensor([1, 2])))
    expected = (torch.tensor([0, 128, 255]) / 255.0 - torch.tensor(RGB_MEAN)) / torch.tensor(RGB_STD)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[1, :, 2, 3], expected, atol=1e-6)
    assert y.tolist() == [1, 2]


# --- networks and initial weights --------------------------------------------------------------


def test_grayscale_models_get_a_one_channel_stem_and_vit_the_dataset_size():
    model = build_model("mobilenet_v3_small", num_classes=4, in_channels=1, image_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    vit = build_model("vit_b_16", num_classes=3, in_channels=3, image_size=32)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def _save(tmp_path, state, name="weights.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path.as_uri(), storage.sha256_file(str(path))


def test_imagenet_shaped_weights_load_with_a_new_classifier_and_a_summed_stem(tmp_path):
    source = build_model("resnet18", num_classes=1000, in_channels=3, image_size=32)
    uri, digest = _save(tmp_path, source.state_dict())
    target = build_model("resnet18", num_classes=10, in_channels=1, image_size=32)
    fc_before = target.fc.weight.clone()
    load_weights(target, uri, digest, num_classes=10, cache_dir=None)
    assert torch.equal(target.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(target.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert torch.equal(target.fc.weight, fc_before)  # the 1000-way classifier is not used


def test_weights_are_refused_when_their_digest_or_shapes_differ(tmp_path):
    uri, digest = _save(tmp_path, build_model("resnet34", num_classes=10, in_channels=3, image_size=32).state_dict())
    target = build_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(DigestMismatch, match="initial weights"):
        load_weights(target, uri, "sha256:" + "0" * 64, num_classes=10, cache_dir=None)
    with pytest.raises(WeightsError, match="does not have"):
        load_weights(target, uri, digest, num_classes=10, cache_dir=None)
    junk_uri, junk_digest = _save(tmp_path, {"not": "tensors"}, "junk.pt")
    with pytest.raises(WeightsError, match="state dict"):
        load_weights(target, junk_uri, junk_digest, num_classes=10, cache_dir=None)


# --- the distributed environment ---------------------------------------------------------------


def test_environment_of_torchrun_and_of_a_pytorchjob_pod():
    alone = detect({}, "cpu")
    assert (alone.rank, alone.world_size, alone.distributed, alone.is_main) == (0, 1, False, True)
    torchrun = detect(
        {
            "WORLD_SIZE": "4",
            "RANK": "3",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1",
        },
        "cpu",
    )
    assert (torchrun.rank, torchrun.local_rank, torchrun.local_world_size, torchrun.backend) == (3, 1, 2, "gloo")
    pod = detect({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "master-0", "MASTER_PORT": "23456"}, "auto")
    assert (pod.rank, pod.local_rank, pod.local_world_size, pod.is_main) == (1, 0, 1, False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR and MASTER_PORT unset"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK=2 and WORLD_SIZE=2"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ],
)
def test_an_incomplete_environment_is_refused(env, message):
    with pytest.raises(DistributedError, match=message):
        detect(env, "cpu")
