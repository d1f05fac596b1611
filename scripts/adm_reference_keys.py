"""Write the state-dict key/shape list of DPS's FFHQ ADM from the *reference* architecture definition.

Usage (reads, never copies, the reference code; the list is the test data of tests/unit/test_adm.py):

    git --git-dir=<mirror of DPS2022/diffusion-posterior-sampling> archive \
        effbde7325b22ce8dc3e2c06c160c021e743a12d guided_diffusion configs | tar -x -C /tmp/dps
    python scripts/adm_reference_keys.py /tmp/dps > tests/data/adm_ffhq_keys.txt

It imports the reference ``guided_diffusion.unet.create_model``, builds it with the values of the
reference ``configs/model_config.yaml`` (randomly initialised: no checkpoint is read) and prints
``name<TAB>shape`` per state-dict tensor, then a ``# tensors parameters`` trailer.
"""

import contextlib
import io
import sys

import torch
import yaml


def main(root: str) -> None:
    sys.path.insert(0, root)
    from guided_diffusion.unet import create_model  # the reference definition

    with open(f"{root}/configs/model_config.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["model_path"] = ""
    with contextlib.redirect_stdout(io.StringIO()):  # create_model prints its failed load
        net = create_model(**cfg)
    state = net.state_dict()
    for k, v in state.items():
        print(f"{k}\t{'x'.join(str(s) for s in v.shape)}")
    print(f"# {len(state)} {sum(v.numel() for v in state.values())}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main(sys.argv[1])
