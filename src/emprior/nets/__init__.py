"""Noise-conditional networks h(x, sigma) of Eq. (26) (Appendix C, Tables 2 and 3), one registry of
architectures.

- :class:`~emprior.nets.mlp.MLP` (low-dimensional manifold, Table 2): concat(x, emb(sigma)) ->
  3 x [Linear, SiLU, LayerNorm] -> Linear.
- :class:`~emprior.nets.unet.UNet` (CIFAR-10 / MRI, Table 3): residual blocks modulated by the noise
  embedding in the style of diffusion transformers (adaLN-Zero), multi-head self-attention after each
  residual block at levels with heads > 0, down/up sampling between levels and skip connections.
- :class:`~emprior.nets.wrappers.PixelShuffleWrapper` (MRI): (B, 1, 320, 320) <-> (B, 16, 80, 80)
  around a network.
- :class:`~emprior.nets.adm.ADMUNet`, :func:`~emprior.nets.adm.load_guided_diffusion` (Table 4, FFHQ-256):
  guided-diffusion's U-Net with DPS's ffhq_10m.pt, a pretrained VP noise predictor ``net(x, t)``.
- :func:`~emprior.nets.build.build_denoiser`: a config dict -> a
  :class:`~emprior.diffusion.preconditioning.PreconditionedDenoiser`; :data:`NETS` the registry.
"""

from emprior.core.registry import import_submodules
from emprior.nets.adm import ADMUNet, load_guided_diffusion
from emprior.nets.build import NETS, NetConfigError, build_denoiser
from emprior.nets.embedding import noise_embedding
from emprior.nets.mlp import MLP
from emprior.nets.unet import UNet
from emprior.nets.wrappers import PixelShuffleWrapper

import_submodules(__name__, __path__)  # a new plug-in file registers itself

__all__ = ["ADMUNet", "MLP", "NETS", "NetConfigError", "PixelShuffleWrapper", "UNet", "build_denoiser", "load_guided_diffusion",
           "noise_embedding"]
