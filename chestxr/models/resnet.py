"""ResNet-18 for one-channel radiographs, with torchvision's exact topology."""

from __future__ import annotations

from monai.networks.nets import ResNet, resnet18


def build_resnet18(num_outputs: int, in_channels: int = 1) -> ResNet:
    """MONAI's 2-D ResNet-18 configured to match torchvision's ``resnet18`` layer for layer.

    MONAI's defaults differ from torchvision's: the stem stride is 1 (4x the FLOPs) and the
    projection shortcuts carry a bias. With ``conv1_t_stride=2, bias_downsample=False`` every
    state-dict key and shape equals torchvision's except ``conv1.weight`` (input channels) and
    ``fc.*`` (output count), so ImageNet weights load with only those two adapted.

    Args:
        num_outputs: logits produced by the final linear layer.
        in_channels: image channels (1 for radiographs).

    Returns:
        The network; ``forward`` maps ``(B, in_channels, H, W)`` to ``(B, num_outputs)`` logits.
    """
    return resnet18(
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_outputs,
        conv1_t_size=7,
        conv1_t_stride=2,
        bias_downsample=False,
        shortcut_type="B",
    )
