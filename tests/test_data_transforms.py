"""Transforms follow the Preprocessing they are built from; batch augmentation is exact where it can be."""

import numpy as np
import pytest
import torch
from PIL import Image

from xception.data import ShardSampler, TensorSource
from xception.data.transforms import Augmentation, BatchTransform, eval_transform
from xception.preprocessing import Preprocessing

GRAY28 = Preprocessing(input_size=28, crop_pct=1.0, interpolation="bilinear", mean=(0.25,), std=(0.5,), channels=1)


def batch(n=4, channels=1, size=28, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_evaluation_at_native_size_only_normalises():
    x = batch()
    assert torch.allclose(BatchTransform(GRAY28)(x), (x.float() / 255 - 0.25) / 0.5)


def test_full_crop_with_certain_flip_is_an_exact_mirror_image():
    x = batch()
    flip = Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)
    keep = Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    expected = (x.float() / 255 - 0.25) / 0.5
    assert torch.allclose(BatchTransform(GRAY28, flip)(x), expected.flip(-1), atol=1e-5)
    assert torch.allclose(BatchTransform(GRAY28, keep)(x), expected, atol=1e-5)


def test_augmentation_is_reproducible_from_its_generator_and_varies_otherwise():
    aug = BatchTransform(GRAY28, Augmentation(scale=(0.5, 1.0), translate=0.1))
    x = batch(8)

    def run(seed):
        return aug(x, torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert run(1).shape == (8, 1, 28, 28)


def test_translation_brings_in_black_border():
    white = torch.full((64, 1, 28, 28), 255, dtype=torch.uint8)
    pre = GRAY28.replace(mean=(0.0,), std=(1.0,))
    shifted = BatchTransform(pre, Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), translate=0.2))(
        white, torch.Generator().manual_seed(0))
    assert shifted.min() == 0.0 and shifted.max() == pytest.approx(1.0)


def test_grayscale_batches_feed_three_channel_models():
    pre = Preprocessing(input_size=28, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = BatchTransform(pre)(batch(2))
    assert out.shape == (2, 3, 28, 28) and torch.equal(out[:, 0], out[:, 2])


def test_batch_resize_and_crop_matches_the_preprocessing_rule():
    pre = Preprocessing(input_size=24, crop_pct=0.75, interpolation="bilinear", mean=(0.0,), std=(1.0,),
                        channels=1)
    assert pre.resize_size == 32
    x = batch(1, size=64)
    out = BatchTransform(pre)(x)
    resized = torch.nn.functional.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", antialias=True,
                                              align_corners=False)
    assert out.shape == (1, 1, 24, 24) and torch.allclose(out, resized[..., 4:28, 4:28], atol=1e-6)


def test_pil_evaluation_transform_resizes_the_shorter_side_then_crops_the_centre():
    pre = Preprocessing(input_size=20, crop_pct=0.5, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                        std=(0.5, 0.5, 0.5))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    out = eval_transform(pre)(image)
    expected = np.asarray(image.resize((53, 40), Image.BILINEAR), dtype=np.float32)[10:30, 16:36] / 127.5 - 1
    assert out.shape == (3, 20, 20)
    assert np.abs(out.permute(1, 2, 0).numpy() - expected).max() < 0.05  # PIL vs torchvision antialiasing


@pytest.mark.parametrize("size, world", [(10, 1), (10, 3), (2, 4)])
def test_evaluation_shards_cover_every_sample_exactly_once(size, world):
    shards = [list(ShardSampler(size, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(size))
    assert [len(ShardSampler(size, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_in_memory_evaluation_batches_keep_order_and_labels():
    source = TensorSource(batch(10), torch.arange(10) % 3, ["a", "b", "c"], "test")
    got = [(x.shape[0], y.tolist()) for x, y, _ in source.batches(GRAY28, train=False, batch_size=4)]
    assert got == [(4, [0, 1, 2, 0]), (4, [1, 2, 0, 1]), (2, [2, 0])]
    with pytest.raises(ValueError, match="need a sampler"):
        source.batches(GRAY28, train=True, batch_size=4)
