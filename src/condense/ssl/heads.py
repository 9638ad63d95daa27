"""Small heads trained with a self-supervised encoder and thrown away afterwards.

- `MLPHead`: Linear -> BatchNorm1d -> ReLU -> Linear, SimCLR's projection head g(.) (Chen et al.
  2020) and BYOL's projector and predictor (Grill et al. 2020) alike, sized from the observed
  embedding width.
- `PixelDecoder`: embedding -> MLP -> every pixel of the input (`(C, H, W)`), the "small decoder"
  of the masked / denoising autoencoder; on 8x8 digits a 32-d embedding decodes through 128 units.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from condense.core.errors import ConfigError


class MLPHead(nn.Sequential):
    """`Linear(in_dim, hidden) -> BN -> ReLU -> Linear(hidden, out_dim)`."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        for name, v in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if v < 1:
                raise ConfigError(f"MLPHead: {name} must be >= 1, got {v}")
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class PixelDecoder(nn.Module):
    """Decode a `(B, D)` embedding to a `(B, *out_shape)` image through one hidden layer."""

    def __init__(self, in_dim: int, out_shape: Sequence[int], hidden_dim: int = 128) -> None:
        super().__init__()
        self.out_shape = tuple(int(d) for d in out_shape)
        if in_dim < 1 or hidden_dim < 1 or not self.out_shape or min(self.out_shape) < 1:
            raise ConfigError(f"PixelDecoder: bad sizes in_dim={in_dim}, hidden_dim={hidden_dim}, out_shape={self.out_shape}")
        n = 1
        for d in self.out_shape:
            n *= d
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, n))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.flatten(1)).reshape(len(z), *self.out_shape)

    def extra_repr(self) -> str:
        return f"out_shape={self.out_shape}"
