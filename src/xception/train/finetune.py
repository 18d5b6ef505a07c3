"""Fine-tuning: train only the new head for a while, and keep the backbone's BatchNorm statistics.

On a small dataset the batch statistics of a few dozen images are a poor estimate of the ones the
pretrained weights learnt on a million; eval-mode BatchNorm normalises with the pretrained running
statistics and leaves them as they are, while its scale and shift still train::

    >>> model.train()
    >>> freeze_batchnorm(model)          # after every model.train(): it sets every layer back to training
    >>> freeze_backbone(model)           # and, for the first epochs, train the head alone

In a recipe: ``freeze_bn = true`` (all epochs) and ``freeze_epochs = N`` (head only, BN frozen too).
"""

from __future__ import annotations

from torch import nn

HEAD = "head"  # the classifier's module name (pooling, dropout, the new fully connected layer)

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm layer outside the head in eval mode: it normalises with its running statistics and
    no longer updates them. Returns how many layers it froze. ``model.train()`` undoes it: call it after."""
    frozen = 0
    for name, module in model.named_modules():
        if isinstance(module, _NORMS) and name.split(".")[0] != HEAD:
            module.eval()
            frozen += 1
    return frozen


def freeze_backbone(model: nn.Module, frozen: bool = True) -> None:
    """Train only the head's parameters (``frozen``), or every parameter again."""
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen or name.split(".")[0] == HEAD)
