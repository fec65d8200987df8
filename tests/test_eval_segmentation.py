"""The U-Net on the trunk: shapes, encoder weights are the pretrained ones, it fits a tiny mask set."""
import pytest
import torch

from eval_fakes import BlobCXR, tiny_model
from mlvicx_core.evaluation.segmentation import UNet, predict_dice, train_segmentation
from mlvicx_core.evaluation.trunk import Trunk


def test_unet_shapes_and_encoder_is_the_trunk():
    model = tiny_model()
    unet = UNet(Trunk(model), n_classes=3)
    assert unet(torch.rand(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    torch.testing.assert_close(unet.encoder.backbone.layer3[0].conv1.weight,
                               model.backbone.layer3[0].conv1.weight)
    with pytest.raises(ValueError, match="divisible by 32"):
        unet(torch.rand(1, 1, 48, 48))


@pytest.mark.slow
def test_unet_fits_a_tiny_mask_set():
    ds = BlobCXR(n=8, image_size=32, seed=0)
    model = tiny_model()
    # like a pretrained checkpoint, the trunk's BatchNorm statistics come from seeing the images
    model.train()
    with torch.no_grad():
        images = torch.stack([ds[i]["image"] for i in range(len(ds))])
        for _ in range(10):
            model.taps(images)
    trunk = Trunk(model.eval())
    small = (64, 32, 16, 16, 8)
    before = predict_dice(UNet(trunk, 2, small), ds).mean()
    res = train_segmentation(trunk, ds, ds, epochs=12, lr=1e-2, batch_size=4,
                             decoder_channels=small, seed=0)
    after = predict_dice(res.model, ds)
    assert after.shape == (8, 2)
    # the kept epoch is the best validation epoch, and the returned model has its weights
    assert res.history[res.best_epoch]["val_dice"] == max(h["val_dice"] for h in res.history)
    assert after.mean() == pytest.approx(res.history[res.best_epoch]["val_dice"], abs=1e-6)
    assert after.mean() > 0.75 and after.mean() > before + 0.3, (before, after.mean())


def test_segmentation_needs_masks():
    with pytest.raises(ValueError, match="masks"):
        train_segmentation(Trunk(tiny_model()), BlobCXR(n=4, masks=False),
                           BlobCXR(n=4, masks=False), epochs=1)
