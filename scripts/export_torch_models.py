"""Export PyTorch models with live BatchNormalization, to try bnfold on (needs torch + torchvision).

    pip install torch torchvision onnxscript
    python scripts/export_torch_models.py OUT_DIR [--only resnet18 dcgan ...]
    python scripts/try_models.py OUT_DIR

Not used by the tests (they must not need torch). Each model is exported twice:
with the TorchScript exporter (`dynamo=False, do_constant_folding=False`, file
`NAME.onnx`) and with the dynamo exporter (`optimize=False`, external data,
folder `NAME_dynamo/`). Weights are random and every BN gets random running
statistics and affine parameters, so a wrong fold cannot hide in rounding.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from torch import nn


class DCGANGenerator(nn.Module):
    """The DCGAN generator: ConvTranspose + BN + ReLU stacks, 100-d noise to 64×64 images."""

    def __init__(self, nz: int = 100, ngf: int = 32) -> None:
        super().__init__()
        layers, channels = [], [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        for index, (cin, cout) in enumerate(itertools.pairwise(channels)):
            stride, pad = (1, 0) if index == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, noise):
        return self.main(noise)


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 64, bias=False),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def catalogue() -> dict:
    from torchvision import models
    from torchvision.models import video

    image = (1, 3, 224, 224)
    return {
        "resnet18": (lambda: models.resnet18(), image),
        "mobilenet_v2": (lambda: models.mobilenet_v2(), image),
        "efficientnet_b0": (lambda: models.efficientnet_b0(), image),
        "densenet121": (lambda: models.densenet121(), image),
        "inception_v3": (lambda: models.inception_v3(aux_logits=False, init_weights=True), (1, 3, 299, 299)),
        "regnet_y_400mf": (lambda: models.regnet_y_400mf(), image),
        "shufflenet_v2_x0_5": (lambda: models.shufflenet_v2_x0_5(), image),
        "r3d_18": (lambda: video.r3d_18(), (1, 3, 8, 112, 112)),
        "dcgan_generator": (lambda: DCGANGenerator(), (1, 100, 1, 1)),
        "mlp_bn1d": (mlp, (4, 32)),
    }


def randomize_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.2)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.3)


def export(name: str, build, shape, out_dir: Path) -> None:
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        randomize_batch_norms(model, torch.Generator().manual_seed(1))
    example = (torch.randn(shape),)
    dynamic = {"input": {0: "batch"}, "output": {0: "batch"}}
    torch.onnx.export(
        model,
        example,
        out_dir / f"{name}.onnx",
        dynamo=False,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes=dynamic,
        opset_version=17,
    )
    dynamo_dir = out_dir / f"{name}_dynamo"
    dynamo_dir.mkdir(exist_ok=True)
    program = torch.onnx.export(
        model, example, dynamo=True, optimize=False, input_names=["input"], output_names=["output"]
    )
    program.save(dynamo_dir / "model.onnx", external_data=True)
    print(f"exported {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (build, shape) in catalogue().items():
        if args.only is None or name in args.only:
            export(name, build, shape, args.out)


if __name__ == "__main__":
    main()
