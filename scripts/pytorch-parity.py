#!/usr/bin/env python3
"""PyTorch parity check for `pnn import`, `pnn export` and `pnn eval`.

What it checks
--------------
pnn reimplements the PyTorch models of michaelklachko/pnn.pytorch ("the
reproduction") and juefeix/pnn.pytorch.update ("the update"). This script
builds those models with the references' own `models.py` (loaded unmodified
from a checkout of each repository) and checks that pnn computes the same
thing from the same weights, in both directions:

* torch -> pnn: `pnn import` reads the reference's `state_dict.pth` and its
  whole-model `model.pth` (as the reference's main.py saves it), then
  `pnn eval --inputs` must give the reference's logits on a fixed batch.
* pnn -> torch: `pnn export --format safetensors` must write the reference's
  state_dict names and layouts: the file is loaded into a freshly built
  reference model with `load_state_dict(strict=True)`, and that model's logits
  must equal pnn's. The exported tensors are also compared with the originals.
* real data (with --dataroot, or --mnist-dataroot / --cifar-dataroot):
  `pnn eval --dataset-test` on the first 500 test images, read by pnn; the
  normalised inputs it returns are fed to the reference model, whose argmax
  accuracy must equal pnn's and whose logits must agree.

Logits must agree to --atol (default 1e-4, maximum absolute difference).

How to run it
-------------
Regenerate the fixtures (needs torch and safetensors, nothing of pnn):

    python scripts/pytorch-parity.py fixtures \\
        --reproduction REPRO_CHECKOUT --update UPDATE_CHECKOUT \\
        --out tests/fixtures/pytorch

Run the check against a pnn binary:

    python scripts/pytorch-parity.py check --pnn target/release/pnn \\
        --fixtures tests/fixtures/pytorch \\
        --reproduction REPRO_CHECKOUT --update UPDATE_CHECKOUT \\
        [--dataroot DIR | --mnist-dataroot DIR --cifar-dataroot DIR [--cifar-dataset Folder]]

It prints a table (case, source file, direction, max abs diff, accuracy pnn /
torch, pass/FAIL) and exits 1 if any check failed.

Score a trained pnn checkpoint in the reference (export, load strictly, the
whole test set pnn evaluates, fed to both):

    python scripts/pytorch-parity.py trained --checkpoint results/<run> \
        --reproduction REPRO_CHECKOUT --update UPDATE_CHECKOUT

`scripts/pytorch-parity.sh` makes a virtual environment, clones the two
references at pinned commits and runs the check.

Notes on the references
-----------------------
* The references' `models.py` and `utils.py` are imported under their own
  module names (`models`, `utils`), as main.py imports them, so that
  `torch.save(model)` pickles classes as `models.LeNet` etc., as a checkpoint
  made by main.py does.
* noiseresnet18: the reference's NoiseLayer creates its noise as an empty
  `nn.Parameter(...).to(device)` and fills it at the first forward with
  `(2*uniform-1)*level`, shape = the layer's input map [C, H, W]. On the CPU
  `.to(device)` keeps the Parameter registered and that first forward raises
  (it assigns a plain tensor to a registered parameter). This script gives
  every NoiseLayer its noise before anything else, drawn as the reference
  draws it, as an `nn.Parameter` of shape [C, H, W], so that the forward works
  on the CPU and the noise is in the state_dict as `<prefix>.noise`.
  On a GPU the reference keeps the noise as a plain tensor attribute instead:
  it is missing from a state_dict there and only a whole-model file carries
  it. `model_cuda_layout.pth` is that layout (saved on the CPU).
"""

import os

# Everything runs on the CPU (set before torch is imported, so that the
# references' module-level `device` is the CPU too).
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import copy
import hashlib
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

try:
    from safetensors.torch import load_file, save_file
except ImportError:  # pragma: no cover
    sys.exit("safetensors is missing: pip install safetensors")


# --------------------------------------------------------------------------
# The cases. `args` are main.py's model arguments (plus pnn's --code); the
# model, flags.txt and the check all derive from them.
# --------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    args: dict
    note: str = ""
    cuda_layout: bool = False  # also write model_cuda_layout.pth (noiseresnet18 only)


CASES = [
    Case("lenet", dict(net_type="lenet", code="reproduction", dataset="MNIST", nfilters=4, nmasks=2,
                       level=0.1, scale_noise=2.0, filter_size=0, first_filter_size=0, unique_masks=True),
         "perturbation layers everywhere, 2 masks per input channel; scale_noise 2 on the first layer"),
    Case("lenet_prelu", dict(net_type="lenet", code="reproduction", dataset="MNIST", nfilters=4, nmasks=1,
                             level=0.2, filter_size=0, first_filter_size=0, act="prelu", use_act=True, manual_seed=3),
         "PReLU (one shared [1] weight per layer, under several state_dict names), --use_act, 1 mask (no groups)"),
    Case("cifarnet", dict(net_type="cifarnet", code="reproduction", dataset="CIFAR10", nfilters=6, nmasks=2,
                          level=0.1, filter_size=0, first_filter_size=0, unique_masks=False),
         "perturbation layers, 2 masks, the same masks for every input channel (--no-unique_masks)"),
    Case("resnet18", dict(net_type="resnet18", code="reproduction", dataset="CIFAR10", nfilters=4),
         "plain ResNet-18 (kuangliu's), no noise"),
    Case("noiseresnet18", dict(net_type="noiseresnet18", code="reproduction", dataset="CIFAR10", nfilters=4,
                               level=0.1, first_filter_size=3),
         "the original PNN: 3x3 stem, NoiseLayers with [C,H,W] noise"),
    Case("perturb_resnet18", dict(net_type="perturb_resnet18", code="reproduction", dataset="CIFAR10", nfilters=3,
                                  nmasks=2, level=0.1, filter_size=0, first_filter_size=0, unique_masks=True),
         "perturbation layers everywhere (first layer too), 2 unique masks per input channel"),
    Case("perturb_resnet18_mix", dict(net_type="perturb_resnet18", code="reproduction", dataset="CIFAR10",
                                      nfilters=3, nmasks=1, level=0.1, filter_size=0, first_filter_size=3,
                                      unique_masks=True, mix_maps=True),
         "3x3 convolution (no noise) as first layer, perturbation layers with 1 mask after it, --mix_maps "
         "(second 1x1 conv + BN + act in every perturbation layer)"),
    Case("perturb_resnet18_update", dict(net_type="perturb_resnet18", code="update", dataset="CIFAR10", nfilters=2,
                                         nmasks=1, level=0.1, filter_size=0, first_filter_size=0, unique_masks=True),
         "the update's perturb_resnet18 (its README's command, small): PerturbLayerFirst with nfilters*5 masks, "
         "20x noise, sigmoid, BatchNorm before the 1x1 convolution, then a 1x1 conv + BN + act stem"),
    Case("perturb_resnet18_update_prelu", dict(net_type="perturb_resnet18", code="update", dataset="CIFAR10",
                                               nfilters=1, nmasks=1, level=0.1, filter_size=3, first_filter_size=0,
                                               act="prelu", manual_seed=4),
         "the update's first layer with --act prelu (the model-level act after its 1x1 conv + BN, registered "
         "twice) and 3x3 convolutions in the blocks"),
    Case("noiseresnet18_update", dict(net_type="noiseresnet18", code="update", dataset="CIFAR10", nfilters=2,
                                      level=0.1, first_filter_size=3, manual_seed=2),
         "the update's noiseresnet18 (same modules as the reproduction's; its stem is frozen in training); "
         "also model_cuda_layout.pth", cuda_layout=True),
]

CASE_BY_NAME = {c.name: c for c in CASES}

# main.py's defaults for the model arguments
MAIN_DEFAULTS = dict(code="reproduction", dataset="CIFAR10", nfilters=64, nmasks=1, level=0.5, scale_noise=1.0,
                     noise_type="uniform", filter_size=0, first_filter_size=0, act="relu", pool_type="max",
                     dropout=0.5, unique_masks=True, use_act=False, train_masks=False, mix_maps=False,
                     manual_seed=1)


def fmt_num(x):
    return repr(x) if isinstance(x, float) else str(x)


def flags_for(args):
    """The pnn flags (one line) that build the model of `args`: every model flag spelled out."""
    a = dict(MAIN_DEFAULTS, **args)
    parts = [
        "--net-type", a["net_type"], "--code", a["code"],
        "--dataset-train", a["dataset"], "--dataset-test", a["dataset"],
        "--nfilters", a["nfilters"], "--nmasks", a["nmasks"],
        "--level", a["level"], "--scale_noise", a["scale_noise"], "--noise_type", a["noise_type"],
        "--filter_size", a["filter_size"], "--first_filter_size", a["first_filter_size"],
        "--act", a["act"], "--pool_type", a["pool_type"], "--dropout", a["dropout"],
        "--unique_masks" if a["unique_masks"] else "--no-unique_masks",
        "--use_act" if a["use_act"] else "--no-use_act",
        "--train_masks" if a["train_masks"] else "--no-train_masks",
        "--mix_maps" if a["mix_maps"] else "--no-mix_maps",
        "--manual-seed", a["manual_seed"],
    ]
    return " ".join(fmt_num(p) for p in parts)


def flag_parser():
    """Parses a flags.txt line: main.py's model flags, as pnn spells them, plus --code."""
    p = argparse.ArgumentParser(prog="flags.txt", add_help=False)
    p.add_argument("--net-type", dest="net_type", required=True)
    p.add_argument("--code", default="reproduction", choices=["reproduction", "update"])
    p.add_argument("--dataset-train", dest="dataset_train", default="CIFAR10")
    p.add_argument("--dataset-test", dest="dataset_test", default="CIFAR10")
    p.add_argument("--nfilters", type=int, default=64)
    p.add_argument("--nmasks", type=int, default=1)
    p.add_argument("--level", type=float, default=0.5)
    p.add_argument("--scale_noise", type=float, default=1.0)
    p.add_argument("--noise_type", default="uniform")
    p.add_argument("--filter_size", type=int, default=0)
    p.add_argument("--first_filter_size", type=int, default=0)
    p.add_argument("--act", default="relu")
    p.add_argument("--pool_type", default="max")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--manual-seed", dest="manual_seed", type=int, default=1)
    for name, default in [("unique_masks", True), ("use_act", False), ("train_masks", False), ("mix_maps", False),
                          ("debug", False)]:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--" + name, dest=name, action="store_true")
        g.add_argument("--no-" + name, dest=name, action="store_false")
        p.set_defaults(**{name: default})
    return p


def parse_flags(line):
    return flag_parser().parse_args(shlex.split(line))


def geometry(dataset):
    """(channels, size, classes, avgpool for filter_size < 7), as main.py derives them."""
    if dataset.upper().startswith("CIFAR"):
        return 3, 32, 10, 4
    if dataset.upper().startswith("MNIST"):
        return 1, 28, 10, 14
    raise SystemExit(f"unsupported data set {dataset!r} (the cases use MNIST and CIFAR10)")


# --------------------------------------------------------------------------
# The references
# --------------------------------------------------------------------------

class Reference:
    """One reference checkout: its models.py and utils.py, imported as `models` and `utils`."""

    def __init__(self, code, folder):
        self.code = code
        self.folder = Path(folder).resolve()
        models_py = self.folder / "models.py"
        if not models_py.is_file():
            raise SystemExit(f"{models_py} not found (--{code} must be a checkout of the reference)")
        self.models_sha256 = hashlib.sha256(models_py.read_bytes()).hexdigest()
        self.commit = git_head(self.folder)
        saved = {k: sys.modules.get(k) for k in ("models", "utils")}
        try:
            self.utils = self._load("utils")
            self.models = self._load("models")
        finally:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v

    def _load(self, name):
        spec = importlib.util.spec_from_file_location(name, self.folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # models.py does `from utils import ...`
        spec.loader.exec_module(module)
        return module

    def activate(self):
        """Make `models`/`utils` name this reference (pickling a whole model looks classes up there)."""
        sys.modules["models"] = self.models
        sys.modules["utils"] = self.utils

    def build(self, a):
        """The model of parsed flags `a`, built as the reference's main.py builds it (without weights_init)."""
        _, input_size, nclasses, avgpool = geometry(a.dataset_train)
        if a.filter_size == 7:
            avgpool = 1 if input_size == 32 else 7
        factory = getattr(self.models, a.net_type)
        return factory(nfilters=a.nfilters, avgpool=avgpool, nclasses=nclasses, nmasks=a.nmasks,
                       unique_masks=a.unique_masks, level=a.level, filter_size=a.filter_size,
                       first_filter_size=a.first_filter_size, act=a.act, scale_noise=a.scale_noise,
                       noise_type=a.noise_type, use_act=a.use_act, dropout=a.dropout, train_masks=a.train_masks,
                       pool_type=a.pool_type, debug=a.debug, input_size=input_size, mix_maps=a.mix_maps)


def git_head(folder):
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(folder) / ".git").exists():
            return out.stdout.strip()
    except OSError:
        pass
    return "unknown (not a git checkout)"


def noise_layers(model):
    return [(name, m) for name, m in model.named_modules() if type(m).__name__ == "NoiseLayer"]


def install_noise(model, input_shape):
    """Give each NoiseLayer the noise its first forward would draw, as an nn.Parameter of shape [C, H, W].

    Draws in forward order from torch's global generator, as the reference does:
    uniform_() on a tensor of the input's per-image shape, then (2*u - 1) * level.
    """
    def pre_hook(module, inputs):
        if module.noise.numel() == 0:
            u = torch.empty(inputs[0].shape[1:]).uniform_()
            module.noise = nn.Parameter((2 * u - 1) * module.level, requires_grad=False)

    layers = noise_layers(model)
    if not layers:
        return
    hooks = [m.register_forward_pre_hook(pre_hook) for _, m in layers]
    training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    model.train(training)


def load_reference_state(model, state):
    """load_state_dict(strict=True); NoiseLayers first take their noise's shape from `state`."""
    for name, m in noise_layers(model):
        key = f"{name}.noise"
        if key in state:
            m.noise = nn.Parameter(state[key].detach().clone().float(), requires_grad=False)
    model.load_state_dict(state, strict=True)
    return model.eval()


def logits_of(model, inputs):
    with torch.no_grad():
        return model.eval()(inputs)


def max_abs(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def keys_listing(state):
    return "".join(f"{k} [{','.join(str(d) for d in v.shape)}] {str(v.dtype).replace('torch.', '')}\n"
                   for k, v in state.items())


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

def make_fixture(case, ref, out_dir):
    a = parse_flags(flags_for(case.args))
    channels, size, _, _ = geometry(a.dataset_train)
    geom = (channels, size, size)
    ref.activate()

    torch.manual_seed(a.manual_seed)
    model = ref.build(a)
    install_noise(model, geom)           # before anything else (noiseresnet18 only)
    model.apply(ref.utils.weights_init)  # as main.py does after building
    # Stand-in for training: BatchNorm affine parameters away from 1 and 0 and
    # PReLU slopes away from 0.25, so that a swapped or dropped one shows.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5)
    # Running statistics away from their defaults: a few forward passes in train mode.
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(8, *geom) * 1.5 + 0.25)
    model.eval()
    inputs = torch.randn(4, *geom)
    logits = logits_of(model, inputs)

    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.iterdir():
        if f.is_file():
            f.unlink()
    state = model.state_dict()
    torch.save(state, out_dir / "state_dict.pth")
    torch.save(model, out_dir / "model.pth")
    if case.cuda_layout:
        # The layout a GPU run of the reference saves: noise as a plain tensor attribute, not a parameter.
        gpu_like = copy.deepcopy(model)
        for _, m in noise_layers(gpu_like):
            noise = m.noise.detach().clone()
            del m._parameters["noise"]
            m.noise = noise
            assert "noise" not in m._parameters and "noise" in m.__dict__
        torch.save(gpu_like, out_dir / "model_cuda_layout.pth")
    save_file({"inputs": inputs.contiguous(), "logits": logits.contiguous()}, str(out_dir / "batch.safetensors"),
              metadata={"case": case.name, "code": a.code, "models_py_sha256": ref.models_sha256,
                        "reference_commit": ref.commit, "torch": torch.__version__})
    (out_dir / "flags.txt").write_text(flags_for(case.args) + "\n")
    (out_dir / "keys.txt").write_text(keys_listing(state))

    # Self-test: the files reproduce the logits in torch.
    fresh = load_reference_state(ref.build(a), torch.load(out_dir / "state_dict.pth", weights_only=True))
    d_sd = max_abs(logits_of(fresh, inputs), logits)
    whole = [torch.load(f, weights_only=False) for f in sorted(out_dir.glob("model*.pth"))]
    d_whole = max(max_abs(logits_of(m, inputs), logits) for m in whole)
    if d_sd > 0 or d_whole > 0:
        raise SystemExit(f"{case.name}: the saved files do not reproduce the logits ({d_sd}, {d_whole})")
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"{case.name:26s} {size / 1024:7.1f} KiB  logits |max| {logits.abs().max().item():7.3f}  "
          f"{len(state)} state_dict entries")
    return size


README_HEAD = """# PyTorch parity fixtures

Made by `scripts/pytorch-parity.py fixtures`; used by `scripts/pytorch-parity.py check`, which
imports them with `pnn import`, evaluates them with `pnn eval`, exports them again with
`pnn export` and compares logits with the references' PyTorch models (max abs diff <= 1e-4).

Every case is built by its reference's own factory function from its unmodified `models.py`,
as that reference's `main.py` builds it (main.py's `utils.weights_init` applied), with
`torch.manual_seed(<--manual-seed>)` before construction. Then, as a stand-in for training,
the BatchNorm weights are drawn from U(0.5, 1.5), biases from U(-0.2, 0.2) and PReLU slopes
from U(0.05, 0.5), and five forward passes in train mode (no_grad) on
`randn(8, ...) * 1.5 + 0.25` move the running statistics away from their defaults (so every
`num_batches_tracked` is 5). Then `eval()`.

## Files in each case folder

| file | what |
| --- | --- |
| `state_dict.pth` | `torch.save(model.state_dict())` |
| `model.pth` | `torch.save(model)`: the whole pickled model, as the reference's main.py saves checkpoints (classes pickled as `models.<Class>`, modules from `torch.nn.modules.*`) |
| `model_cuda_layout.pth` | `noiseresnet18_update` only (to keep the fixtures small; the reproduction's NoiseLayer is the same code): the whole model with each NoiseLayer's noise as a plain tensor attribute (in the module's `__dict__`, not `_parameters`): the layout a GPU run of the reference saves, see below. Saved on the CPU |
| `batch.safetensors` | `inputs` float32 [4, C, H, W] (`torch.randn`, already "normalised") and `logits` float32 [4, 10], the reference's eval-mode output; metadata: case, code, sha256 of models.py, reference commit, torch version |
| `flags.txt` | one line: the pnn flags that build the same model (every model flag spelled out, `--code` included) |
| `keys.txt` | the state_dict, one entry a line: `name [shape] dtype` (shape comma-separated, `[]` for a scalar) |

## noiseresnet18 and its noise

In both references `NoiseLayer.__init__` does
`self.noise = nn.Parameter(torch.Tensor(0), requires_grad=False).to(device)` and the first
forward fills it with `(2 * uniform_() - 1) * level`, of shape `x[0].shape` = [C, H, W] (the
layer's input channels and map size), the value added to the input. On a GPU `.to(device)`
returns a plain tensor, so the noise is an ordinary attribute: it is **not** in the state_dict
and only a whole-model `torch.save(model)` carries it (`model_cuda_layout.pth` has that layout).
On the CPU the Parameter stays registered and that first forward raises (it assigns a plain
tensor to a registered parameter). The fixture script therefore gives each NoiseLayer its
noise before anything else, drawn as the reference draws it (forward order, torch's global
generator after the seed), as an `nn.Parameter` of shape [C, H, W]: it is in `state_dict.pth`
and `model.pth` as `<prefix>.noise`, e.g. `layer1.0.layers.0.noise [4,32,32]`.

## What to expect in the state_dicts

- Perturbation layers (`PerturbLayer`, the update's `PerturbLayerFirst`) hold their masks as
  `<prefix>.noise` of shape [1, C or 1, nmasks, H, W] (C with unique masks, 1 without), the
  unscaled draws: the layer adds `noise * level` (`level * scale_noise` in the first layer, and
  `level * scale_noise * 20` in the update's first layer). `level` is not in the state_dict;
  it comes from the flags. A layer with a convolution instead (`filter_size > 0`) has no noise.
- Every BatchNorm has `num_batches_tracked` (int64, shape []).
- The same tensor under several names: LeNet and CifarNet keep `linear1`, `batch_norm` and
  `linear2` both as attributes and inside `last_layers`, so `linear1.weight` and
  `last_layers.1.weight` (and `batch_norm.*` / `last_layers.2.*`, `linear2.*` / `last_layers.5.*`)
  are one tensor; `torch.save` stores it once and both keys point at the same storage.
  Likewise an activation with a parameter (PReLU, one [1] weight) is a single module per layer
  used in several places: `first_layers.0.act.weight` = `first_layers.0.layers.2.weight`
  (`mix_layers.2.weight` too with --mix_maps); LeNet/CifarNet's `act.weight` =
  `last_layers.3.weight`; in the update's perturb_resnet18 `act.weight` = `pre_layers.3.weight`.
  ReLU, Sigmoid, Dropout and pooling have no entries.
- The .pth files are torch's zip format; the folder inside the zip is named after the file
  (`state_dict/data.pkl`, `model/data.pkl`, ...), not `archive/`. Pickle protocol 2.
"""


def write_readme(out, refs, sizes):
    lines = [README_HEAD, "\n## Cases\n\n| case | folder size | flags | what |\n| --- | --- | --- | --- |\n"]
    for c in CASES:
        if c.name in sizes:
            lines.append(f"| `{c.name}` | {sizes[c.name] / 1024:.0f} KiB | `{flags_for(c.args)}` | {c.note} |\n")
    lines.append("\n## Provenance\n\n")
    for code, ref in refs.items():
        url = REPO_URLS[code]
        lines.append(f"- {code}: {url} at commit `{ref.commit}` (models.py sha256 `{ref.models_sha256}`)\n")
    lines.append(f"- torch {torch.__version__}, Python {sys.version.split()[0]}\n")
    lines.append(
        "\n## Regenerate\n\n"
        "```sh\n"
        "git clone https://github.com/michaelklachko/pnn.pytorch target/parity-refs/reproduction\n"
        f"git -C target/parity-refs/reproduction checkout {refs['reproduction'].commit}\n"
        "git clone https://github.com/juefeix/pnn.pytorch.update target/parity-refs/update\n"
        f"git -C target/parity-refs/update checkout {refs['update'].commit}\n"
        "python scripts/pytorch-parity.py fixtures --reproduction target/parity-refs/reproduction \\\n"
        "    --update target/parity-refs/update --out tests/fixtures/pytorch\n"
        "```\n\n"
        "or `scripts/pytorch-parity.sh fixtures` (which does the same in a virtual environment).\n"
        "With the same torch version on the same machine the files come out byte for byte the same;\n"
        "elsewhere values may differ in the last bits (CPU kernels), which the check's 1e-4 tolerates.\n\n"
        "## Check pnn against them\n\n"
        "```sh\n"
        "scripts/pytorch-parity.sh                       # or:\n"
        "python scripts/pytorch-parity.py check --pnn target/release/pnn --fixtures tests/fixtures/pytorch \\\n"
        "    --reproduction target/parity-refs/reproduction --update target/parity-refs/update \\\n"
        "    [--dataroot DIR]\n"
        "```\n\n"
        "With `--dataroot` (or `--mnist-dataroot` / `--cifar-dataroot`, and `--cifar-dataset Folder` for an\n"
        "image-folder copy of CIFAR-10 such as `../shared/data/cifar10-jpeg.tar.gz` unpacked) it also\n"
        "evaluates the first 500 real test images in pnn and in torch.\n")
    (out / "README.md").write_text("".join(lines))


REPO_URLS = {"reproduction": "https://github.com/michaelklachko/pnn.pytorch",
             "update": "https://github.com/juefeix/pnn.pytorch.update"}


def cmd_fixtures(opts):
    refs = {"reproduction": Reference("reproduction", opts.reproduction), "update": Reference("update", opts.update)}
    out = Path(opts.out)
    cases = [CASE_BY_NAME[n] for n in opts.cases] if opts.cases else CASES
    sizes = {}
    for case in cases:
        sizes[case.name] = make_fixture(case, refs[case.args["code"]], out / case.name)
    if not opts.cases:
        write_readme(out, refs, sizes)
    print(f"total {sum(sizes.values()) / 1024:.1f} KiB in {out}")


# --------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------

@dataclass
class Row:
    case: str
    source: str
    direction: str
    diff: float = None
    acc: str = "-"
    ok: bool = False
    note: str = ""


class Pnn:
    def __init__(self, path, verbose, extra_eval_args):
        self.path = str(path)
        self.verbose = verbose
        self.extra_eval_args = extra_eval_args

    def run(self, *args):
        cmd = [self.path, *[str(a) for a in args]]
        if self.verbose:
            print("  $ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if self.verbose and proc.stdout.strip():
            print("    " + proc.stdout.strip().splitlines()[-1])
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise RuntimeError(f"`pnn {args[0]}` exited {proc.returncode}: " + " | ".join(tail))
        return proc.stdout

    def eval(self, ckpt, *args):
        return self.run("eval", ckpt, *args, *self.extra_eval_args)


CHECK_ERRORS = (RuntimeError, OSError, KeyError, ValueError, subprocess.TimeoutExpired)


def check_case(case_dir, refs, pnn, work, opts):
    """All rows for one case folder: the torch self-test, then per .pth file (a), (b) and, once, (c)."""
    name = case_dir.name
    a = parse_flags((case_dir / "flags.txt").read_text().strip())
    flags = shlex.split((case_dir / "flags.txt").read_text().strip())
    ref = refs[a.code]
    ref.activate()
    batch_path = case_dir / "batch.safetensors"
    batch = load_file(str(batch_path))
    made_by = safetensors_metadata(batch_path).get("models_py_sha256")
    if made_by and made_by != ref.models_sha256:
        print(f"warning: {name} was made by another {a.code} models.py ({made_by[:12]}, "
              f"not {ref.models_sha256[:12]})")

    # The reference with the fixture's state_dict must reproduce the stored logits.
    state = torch.load(case_dir / "state_dict.pth", weights_only=True)
    torch_model = load_reference_state(ref.build(a), state)
    d = max_abs(logits_of(torch_model, batch["inputs"]), batch["logits"])
    rows = [Row(name, "state_dict.pth", "torch self-test", d, ok=d <= opts.atol)]

    for source in ("state_dict.pth", "model.pth", "model_cuda_layout.pth"):
        if not (case_dir / source).exists():
            continue
        ckpt = work / name / Path(source).stem
        if ckpt.exists():
            shutil.rmtree(ckpt)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        pth = case_dir / source
        if source == "model_cuda_layout.pth":
            # pnn cannot read a tensor kept as a plain attribute; the recipe in docs/pytorch.md
            # registers the noise in a state_dict first, and that file must then match.
            ref.activate()
            pth = with_registered_noise(pth, work / name / "cuda_layout_registered.pth")
            source = "model_cuda_layout.pth (noise registered)"
        row = Row(name, source, "torch->pnn (import, eval)")
        rows.append(row)
        try:
            got = check_import(pnn, pth, ckpt, flags, batch, batch_path, row, opts)
        except CHECK_ERRORS as e:
            row.note = one_line(e)
            continue  # nothing to export or evaluate
        rows += check_export(pnn, ckpt, ref, a, state, batch["inputs"], got, name, source, opts)
        if source == "state_dict.pth" and test_set_for(a, opts) is not None:
            rows.append(check_data(pnn, ckpt, a, torch_model, name, source, opts))
    return rows


def with_registered_noise(whole_model, out):
    """The recipe of docs/pytorch.md: a whole-model file whose NoiseLayers keep their noise as a
    plain attribute (a GPU run of the reference) saved as a state_dict with `<layer>.noise`."""
    model = torch.load(whole_model, weights_only=False)
    state = model.state_dict()
    for name, m in noise_layers(model):
        state[f"{name}.noise"] = m.noise
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def check_import(pnn, pth, ckpt, flags, batch, batch_path, row, opts):
    """(a) pnn import + pnn eval --inputs; returns pnn's logits."""
    pnn.run("import", pth, "--out", ckpt, *flags)
    out = ckpt.parent / f"{ckpt.name}-batch.safetensors"
    pnn.eval(ckpt, "--inputs", batch_path, "--save-outputs", out)
    got = load_file(str(out))["logits"]
    want = batch["logits"]
    if got.shape != want.shape:
        raise ValueError(f"logits of shape {list(got.shape)}, want {list(want.shape)}")
    row.diff = max_abs(got.float(), want)
    row.ok = row.diff <= opts.atol
    return got.float()


def check_export(pnn, ckpt, ref, a, state, inputs, pnn_logits, name, source, opts):
    """(b) pnn export; the file must hold the reference's names and shapes, load strictly and give pnn's logits."""
    row = Row(name, source, "pnn->torch (export, load)")
    values = Row(name, source, "exported tensors")
    try:
        path = ckpt.parent / f"{ckpt.name}-export.safetensors"
        pnn.run("export", ckpt, "--format", "safetensors", "--out", path)
        exported = load_file(str(path))
        # Key sets explicitly. A missing num_batches_tracked is only noted: load_state_dict(strict=True)
        # itself accepts a file without it (BatchNorm fills in 0), and evaluation does not read it.
        counters = [k for k in state if k not in exported and k.endswith(".num_batches_tracked")]
        missing = [k for k in state if k not in exported and k not in counters]
        unexpected = [k for k in exported if k not in state]
        shapes = [f"{k} {list(exported[k].shape)} (want {list(v.shape)})"
                  for k, v in state.items() if k in exported and exported[k].shape != v.shape]
        problems = [f"{len(missing)} missing: {', '.join(missing[:4])}" if missing else "",
                    f"{len(unexpected)} unexpected: {', '.join(unexpected[:4])}" if unexpected else "",
                    f"{len(shapes)} of another shape: {', '.join(shapes[:3])}" if shapes else ""]
        if any(problems):
            raise ValueError("; ".join(p for p in problems if p))
        back = load_reference_state(ref.build(a), exported)
        row.diff = max_abs(logits_of(back, inputs), pnn_logits)
        row.ok = row.diff <= opts.atol

        floats = [k for k, v in state.items() if v.is_floating_point()]
        values.diff = max(max_abs(exported[k].float(), state[k].float()) for k in floats)
        values.ok = values.diff <= 1e-6
        present = [k for k in state if k in exported]
        notes = [f"{len(counters)} num_batches_tracked missing, e.g. {counters[0]}"] if counters else []
        notes += [f"{k} is {exported[k].dtype}, not {state[k].dtype}" for k in present
                  if exported[k].dtype != state[k].dtype]
        counts = [k for k in present if not state[k].is_floating_point() and not torch.equal(exported[k].long(), state[k])]
        if counts:  # num_batches_tracked does not change evaluation: a note, not a failure
            notes.append(f"{len(counts)} integer entries differ, e.g. {counts[0]} = "
                         f"{exported[counts[0]].tolist()}, not {state[counts[0]].tolist()}")
        values.note = "; ".join(notes[:2] + ([f"... {len(notes) - 2} more"] if len(notes) > 2 else []))
        return [row, values]
    except CHECK_ERRORS as e:
        row.note = one_line(e)
        return [row]


def check_data(pnn, ckpt, a, torch_model, name, source, opts):
    """(c) pnn eval on real test images; the reference on pnn's inputs must agree."""
    row = Row(name, source, f"test data ({opts.test_subset} images)")
    try:
        dataset, root = test_set_for(a, opts)
        out = ckpt.parent / f"{ckpt.name}-data.safetensors"
        pnn.eval(ckpt, "--dataset-test", dataset, "--dataroot", root, "--test-subset", opts.test_subset,
                 "--save-outputs", out)
        data = load_file(str(out))
        x, labels, got = data["inputs"].float(), data["labels"].long(), data["logits"].float()
        ref_logits = logits_of(torch_model, x)
        if got.shape != ref_logits.shape:
            raise ValueError(f"logits of shape {list(got.shape)}, want {list(ref_logits.shape)}")
        acc_pnn = 100.0 * (got.argmax(1) == labels).float().mean().item()
        acc_torch = 100.0 * (ref_logits.argmax(1) == labels).float().mean().item()
        row.diff = max_abs(got, ref_logits)
        row.acc = f"{acc_pnn:.2f} / {acc_torch:.2f}"
        row.ok = row.diff <= opts.atol and acc_pnn == acc_torch and len(labels) == opts.test_subset
        notes = []
        if len(labels) != opts.test_subset:
            notes.append(f"{len(labels)} images, not {opts.test_subset}")
        disagree = (got.argmax(1) != ref_logits.argmax(1)).sum().item()
        if disagree:
            notes.append(f"{disagree} predictions differ")
        row.note = "; ".join(notes)
    except CHECK_ERRORS as e:
        row.note = one_line(e)
    return row


def one_line(e):
    text = " ".join(str(e).split())
    return (text[:500] + " ...") if len(text) > 500 else (text or repr(e))


def safetensors_metadata(path):
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return header.get("__metadata__", {})


def test_set_for(a, opts):
    """pnn's --dataset-test and --dataroot for the case's real test set; None without a data root for it."""
    if a.dataset_test.upper().startswith("MNIST"):
        root = opts.mnist_dataroot or opts.dataroot
        return (a.dataset_test, root) if root else None
    root = opts.cifar_dataroot or opts.dataroot
    return (opts.cifar_dataset or a.dataset_test, root) if root else None


def print_table(rows):
    head = ("case", "source", "direction", "max abs diff", "acc pnn / torch", "result")
    table = [head] + [(r.case, r.source, r.direction, "-" if r.diff is None else f"{r.diff:.3g}", r.acc,
                       "pass" if r.ok else "FAIL") for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(head))]
    for i, t in enumerate(table):
        print("  ".join(s.ljust(w) for s, w in zip(t, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    notes = [r for r in rows if r.note]
    if notes:
        print("\nnotes:")
        for r in notes:
            print(f"  {r.case} {r.source} {r.direction}: {r.note}")


def cmd_check(opts):
    refs = {"reproduction": Reference("reproduction", opts.reproduction), "update": Reference("update", opts.update)}
    pnn = Pnn(Path(opts.pnn).resolve(), opts.verbose, shlex.split(opts.extra_eval_args or ""))
    fixtures = Path(opts.fixtures)
    case_dirs = sorted(p for p in fixtures.iterdir() if (p / "flags.txt").exists())
    if opts.cases:
        case_dirs = [p for p in case_dirs if p.name in opts.cases]
    if not case_dirs:
        raise SystemExit(f"no case folders (with flags.txt) in {fixtures}")
    print(f"torch {torch.__version__}; reproduction {refs['reproduction'].commit[:12]}, "
          f"update {refs['update'].commit[:12]}; atol {opts.atol}")
    with tempfile.TemporaryDirectory(prefix="pnn-parity-") as tmp:
        work = Path(opts.work).resolve() if opts.work else Path(tmp)
        rows = []
        for case_dir in case_dirs:
            print(f"{case_dir.name} ...", flush=True)
            rows += check_case(case_dir, refs, pnn, work, opts)
    print()
    print_table(rows)
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed")
    return 1 if failed else 0


MODEL_FIELDS = ["net_type", "code", "dataset_train", "dataset_test", "nfilters", "nmasks", "level", "scale_noise",
                "noise_type", "filter_size", "first_filter_size", "act", "pool_type", "dropout", "manual_seed",
                "unique_masks", "use_act", "train_masks", "mix_maps", "debug"]


def cmd_trained(opts):
    """A trained pnn checkpoint, exported, in the reference: the whole test set's accuracy and logits."""
    refs = {"reproduction": Reference("reproduction", opts.reproduction), "update": Reference("update", opts.update)}
    pnn = Pnn(Path(opts.pnn).resolve(), opts.verbose, shlex.split(opts.extra_eval_args or ""))
    ckpt = Path(opts.checkpoint)
    if not (ckpt / "state.json").exists():
        ckpt = ckpt / "checkpoint-last"
    config = json.loads((ckpt / "state.json").read_text())["config"]
    a = argparse.Namespace(**{k: config.get(k, False) for k in MODEL_FIELDS})
    ref = refs[a.code]
    ref.activate()
    with tempfile.TemporaryDirectory(prefix="pnn-parity-") as tmp:
        exported, outputs = Path(tmp) / "export.safetensors", Path(tmp) / "outputs.safetensors"
        pnn.run("export", ckpt, "--format", "safetensors", "--out", exported)
        args = ["--save-outputs", outputs] + (["--dataroot", opts.dataroot] if opts.dataroot else [])
        pnn.eval(ckpt, *args)
        model = load_reference_state(ref.build(a), load_file(str(exported)))
        data = load_file(str(outputs))
    x, labels, got = data["inputs"].float(), data["labels"].long(), data["logits"].float()
    ref_logits = torch.cat([logits_of(model, chunk) for chunk in x.split(500)])
    acc_pnn = 100.0 * (got.argmax(1) == labels).float().mean().item()
    acc_torch = 100.0 * (ref_logits.argmax(1) == labels).float().mean().item()
    diff = max_abs(got, ref_logits)
    disagree = (got.argmax(1) != ref_logits.argmax(1)).sum().item()
    print(f"{ckpt}: {len(labels)} test images; accuracy pnn {acc_pnn:.2f}, {a.code}'s models.py {acc_torch:.2f}; "
          f"logits max abs diff {diff:.2e}; {disagree} predictions differ")
    return 0 if diff <= opts.atol and disagree == 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fixtures", help="write the fixtures (torch only)")
    f.add_argument("--reproduction", required=True, help="checkout of michaelklachko/pnn.pytorch")
    f.add_argument("--update", required=True, help="checkout of juefeix/pnn.pytorch.update")
    f.add_argument("--out", default="tests/fixtures/pytorch")
    f.add_argument("--cases", nargs="+", choices=list(CASE_BY_NAME), help="only these (README not rewritten)")

    c = sub.add_parser("check", help="check a pnn binary against the fixtures")
    c.add_argument("--pnn", default="target/release/pnn", help="the pnn binary")
    c.add_argument("--fixtures", default="tests/fixtures/pytorch")
    c.add_argument("--reproduction", required=True, help="checkout of michaelklachko/pnn.pytorch")
    c.add_argument("--update", required=True, help="checkout of juefeix/pnn.pytorch.update")
    c.add_argument("--dataroot", help="real test data for the third check (pnn's --dataroot): MNIST for the "
                                      "MNIST cases, CIFAR-10 for the others")
    c.add_argument("--mnist-dataroot", help="--dataroot for the MNIST cases (default: --dataroot)")
    c.add_argument("--cifar-dataroot", help="--dataroot for the CIFAR-10 cases (default: --dataroot)")
    c.add_argument("--cifar-dataset", help="pnn's --dataset-test for the CIFAR-10 cases (default: the case's "
                                           "own, CIFAR10; e.g. Folder for an image-folder copy)")
    c.add_argument("--test-subset", type=int, default=500)
    c.add_argument("--atol", type=float, default=1e-4, help="largest allowed max abs difference of logits")
    c.add_argument("--cases", nargs="+", help="only these case folders")
    c.add_argument("--work", help="keep pnn's checkpoints and outputs here (default: a temporary folder)")
    c.add_argument("--extra-eval-args", help="more arguments for every `pnn eval`, e.g. '--device cpu'")
    c.add_argument("-v", "--verbose", action="store_true", help="print the pnn commands")

    t = sub.add_parser("trained", help="a trained pnn checkpoint, exported, scored by the reference's models.py "
                                        "on the whole test set pnn evaluates")
    t.add_argument("--checkpoint", required=True, help="a pnn checkpoint folder or run folder")
    t.add_argument("--pnn", default="target/release/pnn", help="the pnn binary")
    t.add_argument("--reproduction", required=True, help="checkout of michaelklachko/pnn.pytorch")
    t.add_argument("--update", required=True, help="checkout of juefeix/pnn.pytorch.update")
    t.add_argument("--dataroot", help="pnn eval's --dataroot (default: the checkpoint's)")
    t.add_argument("--atol", type=float, default=1e-4)
    t.add_argument("--extra-eval-args", help="more arguments for `pnn eval`, e.g. '--device cpu'")
    t.add_argument("-v", "--verbose", action="store_true")

    opts = p.parse_args()
    if opts.command == "fixtures":
        cmd_fixtures(opts)
        return 0
    if opts.command == "trained":
        return cmd_trained(opts)
    return cmd_check(opts)


if __name__ == "__main__":
    sys.exit(main())
