#!/usr/bin/env python3
"""The PyTorch side of bench/compare.sh: pnn's five models written in PyTorch, trained on
synthetic CIFAR-10-shaped data the way `pnn bench` measures them.

The models follow pnn's source (src/models/*.rs, src/layer/*.rs), which follows the reproduction
(michaelklachko/pnn.pytorch): the same layers, shapes and parameter counts, so that a ratio of
images/s compares the same work. The flags are pnn's (and the reproduction's) spellings; the
printed lines have the shape of `pnn bench`'s, so one parser reads both.
"""
import argparse
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def activation(name):
    return {
        "relu": nn.ReLU(),
        "lrelu": nn.LeakyReLU(0.01),
        "elu": nn.ELU(),
        "selu": nn.SELU(),
        "tanh": nn.Tanh(),
        "sigmoid": nn.Sigmoid(),
        "prelu": nn.PReLU(),
        "rrelu": nn.RReLU(),
    }[name]


def layer_output_size(size, filter_size):
    if filter_size in (0, 1, 3):
        return size
    if filter_size == 5:
        return size - 2
    if filter_size == 7:
        return (size + 2 * 3 - 7) // 2 + 1
    raise SystemExit(f"filter size {filter_size} is not one of 0, 1, 3, 5, 7")


def pool_output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def pool(kind, kernel, stride, padding):
    if kind == "max":
        return nn.MaxPool2d(kernel, stride, padding)
    return nn.AvgPool2d(kernel, stride, padding, count_include_pad=True)


class PerturbLayer(nn.Module):
    """filter_size 0: x + level * masks -> [activation] -> grouped 1x1 conv -> BN -> act
    [-> 1x1 conv -> BN -> act with mix_maps]; filter_size > 0: a convolution -> BN -> act."""

    def __init__(self, c_in, c_out, filter_size, nmasks, level, use_act, act, unique, train_masks, mix_maps, size, noise_type):
        super().__init__()
        self.level, self.use_act = level, use_act
        self.act = activation(act)
        self.bn = nn.BatchNorm2d(c_out)
        self.mix = None
        self.perturbs = filter_size == 0
        if filter_size > 0:
            kw = {1: dict(bias=True), 3: dict(padding=1, bias=False), 5: dict(padding=1, bias=False),
                  7: dict(stride=2, padding=3, bias=False)}[filter_size]
            self.conv = nn.Conv2d(c_in, c_out, filter_size, **kw)
            return
        shape = (1, c_in if unique else 1, nmasks, size, size)
        noise = torch.rand(shape) * 2 - 1 if noise_type == "uniform" else torch.randn(shape)
        if train_masks:
            self.noise = nn.Parameter(noise)
        else:
            self.register_buffer("noise", noise)
        self.conv = nn.Conv2d(c_in * nmasks, c_out, 1, groups=c_in if nmasks > 1 else 1)
        if mix_maps:
            # The mixing step reuses the layer's activation (one PReLU slope per layer, as pnn).
            self.mix = nn.ModuleDict({"conv": nn.Conv2d(c_out, c_out, 1), "bn": nn.BatchNorm2d(c_out)})

    def forward(self, x):
        if not self.perturbs:
            return self.act(self.bn(self.conv(x)))
        n, c, h, w = x.shape
        y = x.unsqueeze(2) + self.level * self.noise
        if self.use_act:
            y = self.act(y)
        y = self.act(self.bn(self.conv(y.reshape(n, -1, h, w))))
        if self.mix is None:
            return y
        return self.act(self.mix["bn"](self.mix["conv"](y)))


class PerturbFirst(nn.Module):
    """--code update: the paper authors' updated first layer (juefeix/pnn.pytorch.update), as
    pnn's src/layer/perturb_first.rs builds it. filter_size 0: x + 20 * level * masks (5 x nfilters
    per input channel) -> BN -> sigmoid -> 1x1 conv grouped by input channel to 3 x nfilters -> BN
    -> sigmoid; filter_size > 0: a convolution to 3 x nfilters -> BN -> sigmoid. Then 1x1 conv
    (no bias) to nfilters -> BN -> ReLU."""

    def __init__(self, a, c_in, size):
        super().__init__()
        nf, wide = a.nfilters, 3 * a.nfilters
        self.pool = nn.MaxPool2d(3, 2, 1) if a.first_filter_size == 7 else nn.Identity()
        self.reduce = nn.Sequential(nn.Conv2d(wide, nf, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU())
        if a.first_filter_size > 0:
            self.layer = PerturbLayer(c_in, wide, a.first_filter_size, 1, 0.0, False, "sigmoid", a.unique_masks,
                                      a.train_masks, a.mix_maps, size, a.noise_type)
            return
        nmasks = 5 * nf
        self.level = 20 * a.level * a.scale_noise
        shape = (1, c_in if a.unique_masks else 1, nmasks, size, size)
        noise = torch.rand(shape) * 2 - 1 if a.noise_type == "uniform" else torch.randn(shape)
        if a.train_masks:
            self.noise = nn.Parameter(noise)
        else:
            self.register_buffer("noise", noise)
        self.layer = nn.Sequential(nn.BatchNorm2d(c_in * nmasks), nn.Sigmoid(),
                                   nn.Conv2d(c_in * nmasks, wide, 1, groups=c_in), nn.BatchNorm2d(wide), nn.Sigmoid())

    def forward(self, x):
        if isinstance(self.layer, PerturbLayer):
            return self.reduce(self.pool(self.layer(x)))
        n, c, h, w = x.shape
        y = (x.unsqueeze(2) + self.level * self.noise).reshape(n, -1, h, w)
        return self.reduce(self.pool(self.layer(y)))


def first_layer(a, c_in, size):
    return PerturbLayer(c_in, a.nfilters, a.first_filter_size, a.nmasks, a.level * a.scale_noise, a.use_act,
                        a.act, a.unique_masks, a.train_masks, a.mix_maps, size, a.noise_type)


def inner_layer(a, c_in, c_out, size):
    return PerturbLayer(c_in, c_out, a.filter_size, a.nmasks, a.level, True, a.act, a.unique_masks,
                        a.train_masks, a.mix_maps, size, a.noise_type)


class Head(nn.Module):
    def __init__(self, a, features, hidden, classes):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Dropout(a.dropout), nn.Linear(features, hidden),
                                 nn.BatchNorm1d(hidden), activation(a.act), nn.Dropout(a.dropout),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class LeNet(nn.Module):
    def __init__(self, a, channels, size, classes):
        super().__init__()
        nf = a.nfilters
        self.layer1 = first_layer(a, channels, size)
        size = pool_output_size(layer_output_size(size, a.first_filter_size), 3, 2, 1)
        self.layer2 = inner_layer(a, nf, nf, size)
        size = pool_output_size(layer_output_size(size, a.filter_size), 3, 2, 1)
        self.layer3 = inner_layer(a, nf, nf, size)
        size = pool_output_size(layer_output_size(size, a.filter_size), 3, 2, 1)
        self.pool = pool(a.pool_type, 3, 2, 1)
        self.head = Head(a, nf * size * size, 128, classes)

    def forward(self, x):
        for layer in (self.layer1, self.layer2, self.layer3):
            x = self.pool(layer(x))
        return self.head(x)


class CifarNet(nn.Module):
    def __init__(self, a, channels, size, classes):
        super().__init__()
        nf = a.nfilters
        layers = []
        for i in range(6):
            if i == 0:
                layers.append(first_layer(a, channels, size))
                size = layer_output_size(size, a.first_filter_size)
            else:
                layers.append(inner_layer(a, nf, nf, size))
                size = layer_output_size(size, a.filter_size)
            if i % 2 == 1:
                size = pool_output_size(size, 3, 2, 1)
        self.layers = nn.ModuleList(layers)
        self.pool = pool(a.pool_type, 3, 2, 1)
        self.head = Head(a, nf * size * size, 256, classes)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i % 2 == 1:
                x = self.pool(x)
        return self.head(x)


STAGES = [(1, 1), (2, 2), (4, 2), (8, 2)]


def conv_bn(c_in, c_out, k, stride=1, padding=0):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), nn.BatchNorm2d(c_out))


def shortcut(c_in, c_out, stride):
    return conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride, 1)
        self.conv2 = conv_bn(c_out, c_out, 3, 1, 1)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, a, channels, size, classes):
        super().__init__()
        nf = a.nfilters
        self.stem = conv_bn(channels, nf, 3, 1, 1)
        blocks, c_in = [], nf
        for mult, stride in STAGES:
            for b in range(2):
                blocks.append(BasicBlock(c_in, nf * mult, stride if b == 0 else 1))
                c_in = nf * mult
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(8 * nf, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.linear(x.mean(dim=(2, 3)))


class NoiseLayer(nn.Module):
    """The original authors' layer: relu(x + fixed noise) -> BN -> 1x1 conv."""

    def __init__(self, c_in, c_out, size, level):
        super().__init__()
        self.register_buffer("noise_buffer", (torch.rand(1, c_in, size, size) * 2 - 1) * level)
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.conv(self.bn(F.relu(x + self.noise_buffer)))


class NoiseBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, size, level):
        super().__init__()
        self.noise1 = NoiseLayer(c_in, c_out, size, level)
        self.pool = nn.MaxPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.bn1 = nn.BatchNorm2d(c_out)
        self.noise2 = NoiseLayer(c_out, c_out, size // stride, level)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.pool(self.noise1(x))))
        return F.relu(self.bn2(self.noise2(y)) + self.shortcut(x))


class NoiseResNet18(nn.Module):
    def __init__(self, a, channels, size, classes):
        super().__init__()
        nf = a.nfilters
        if a.first_filter_size == 7:
            self.stem = nn.Sequential(conv_bn(channels, nf, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            size = pool_output_size(layer_output_size(size, 7), 3, 2, 1)
        else:
            self.stem = nn.Sequential(conv_bn(channels, nf, 3, 1, 1), nn.ReLU())
        if a.code == "update":
            # The update freezes the stem's convolution at its random initial weights.
            self.stem[0][0].weight.requires_grad = False
        blocks, c_in = [], nf
        for mult, stage_stride in STAGES:
            for b in range(2):
                stride = stage_stride if b == 0 else 1
                blocks.append(NoiseBlock(c_in, nf * mult, stride, size, a.level))
                c_in, size = nf * mult, size // stride
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(8 * nf, classes)

    def forward(self, x):
        return self.linear(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class PerturbBlock(nn.Module):
    def __init__(self, a, c_in, c_out, stride, size):
        super().__init__()
        self.layer1 = inner_layer(a, c_in, c_out, size)
        after1 = layer_output_size(size, a.filter_size) // stride
        self.pool = pool(a.pool_type, stride, stride, 0) if stride > 1 else nn.Identity()
        self.layer2 = inner_layer(a, c_out, c_out, after1)
        self.shortcut = shortcut(c_in, c_out, stride)
        self.out_size = layer_output_size(after1, a.filter_size)

    def forward(self, x):
        return F.relu(self.layer2(self.pool(self.layer1(x))) + self.shortcut(x))


class PerturbResNet18(nn.Module):
    def __init__(self, a, channels, size, classes):
        super().__init__()
        nf = a.nfilters
        self.first = PerturbFirst(a, channels, size) if a.code == "update" else first_layer(a, channels, size)
        size = layer_output_size(size, a.first_filter_size)
        self.first_pool = nn.Identity()
        if a.first_filter_size == 7 and a.code == "update":
            size = pool_output_size(size, 3, 2, 1)
        elif a.first_filter_size == 7:
            self.first_pool = nn.MaxPool2d(3, 2, 1)
            size = pool_output_size(size, 3, 2, 1)
        blocks, c_in = [], nf
        for mult, stage_stride in STAGES:
            for b in range(2):
                block = PerturbBlock(a, c_in, nf * mult, stage_stride if b == 0 else 1, size)
                blocks.append(block)
                c_in, size = nf * mult, block.out_size
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(8 * nf, classes)

    def forward(self, x):
        x = self.blocks(self.first_pool(self.first(x)))
        return self.linear(x.mean(dim=(2, 3)))


MODELS = {"lenet": LeNet, "cifarnet": CifarNet, "resnet18": ResNet18, "noiseresnet18": NoiseResNet18,
          "perturb_resnet18": PerturbResNet18}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flag = p.add_argument
    flag("--net-type", "--net_type", dest="net_type", default="resnet18", choices=sorted(MODELS))
    flag("--code", default="reproduction", choices=["reproduction", "update"])
    flag("--nfilters", type=int, default=64)
    flag("--first_filter_size", "--first-filter-size", type=int, default=0)
    flag("--filter_size", "--filter-size", type=int, default=0)
    flag("--nmasks", type=int, default=1)
    flag("--level", type=float, default=0.5)
    flag("--scale_noise", "--scale-noise", type=float, default=1.0)
    flag("--noise_type", "--noise-type", default="uniform", choices=["uniform", "normal"])
    flag("--act", default="relu", choices=["relu", "lrelu", "elu", "selu", "tanh", "sigmoid", "prelu", "rrelu"])
    flag("--pool_type", "--pool-type", default="max", choices=["max", "avg"])
    flag("--dropout", type=float, default=0.5)
    for name, default in [("use_act", False), ("unique_masks", True), ("train_masks", False), ("mix_maps", False)]:
        p.add_argument(f"--{name}", dest=name, action="store_true", default=default)
        p.add_argument(f"--no-{name}", dest=name, action="store_false")
    flag("--batch-size", "--batch_size", dest="batch_size", type=int, default=64)
    flag("--learning-rate", "--learning_rate", dest="lr", type=float, default=1e-3)
    flag("--optim-method", "--optim_method", dest="optim", default="SGD", type=str.upper, choices=["SGD", "ADAM"])
    flag("--momentum", type=float, default=0.9)
    flag("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=1e-4)
    flag("--steps", type=int, default=10)
    flag("--warmup", type=int, default=2)
    flag("--threads", type=int, default=2)
    flag("--device", default="cpu", help="cpu or cuda[:N]")
    flag("--manual-seed", "--manual_seed", dest="seed", type=int, default=1)
    flag("--memory-limit-gib", type=float, default=None,
         help="address-space limit; past it the run reports 'out of memory' (default: 85%% of RAM)")
    return p.parse_args(argv)


def limit_memory(gib):
    """Caps this process's address space so that a configuration too large for the machine ends
    with a message here instead of the kernel's OOM killer taking the machine down."""
    import resource
    if gib is None:
        with open("/proc/meminfo") as f:
            total_kib = int(next(l for l in f if l.startswith("MemTotal:")).split()[1])
        gib = 0.85 * total_kib / 2**20
    limit = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return gib


def training_flops(model, channels, size, classes, device):
    """The floating-point operations of one training image, counted from the layer shapes: 2 per
    multiply-add of every convolution and linear layer, once for the forward pass, once for the
    weight gradient where the weight is trained, and once for the input gradient where the
    layer's input needs one (not for a first layer reading the images). Element-wise work (BatchNorm, the activations, the
    noise) is not counted. (PyTorch's own counter, torch.utils.flop_counter, counts a grouped
    convolution's backward pass as if it were ungrouped: 64x too much for the 64-mask layers.)
    Measured on a forward pass of two images, halved; the model's state is left as it was."""
    counted = []

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            macs = output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            macs = output.numel() * module.in_features
        passes = 1 + module.weight.requires_grad + x.requires_grad
        counted.append(2 * macs * passes)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.zeros(2, channels, size, size, device=device)
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.load_state_dict(state)
    return sum(counted) / 2
def perturbed_values(model, channels, size, device):
    """How many perturbed values (x + level * noise) one image makes in the perturbation layers:
    the element-wise work the 64-mask commands spend their time on, which FLOP counts of the
    convolutions leave out."""
    counted = []

    def hook(module, inputs, output):
        if module.perturbs:
            n, c, h, w = inputs[0].shape
            counted.append(c * module.noise.shape[2] * h * w)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PerturbLayer)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model(torch.zeros(2, channels, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.load_state_dict(state)
    return sum(counted)


def main(argv):
    a = parse(argv)
    # CUDA maps far more address space than it uses: the cap is for CPU runs only.
    gib = limit_memory(a.memory_limit_gib) if a.device == "cpu" else float("inf")
    try:
        run(a)
    except (RuntimeError, MemoryError) as e:
        if "memory" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        print(f"{a.net_type} batch {a.batch_size}: out of memory (address space capped at {gib:.0f} GiB): {str(e).splitlines()[0][:120]}")
        print(f"  peak memory:   {peak_rss_mib():.0f} MiB")
        sys.exit(3)


def run(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    channels, size, classes = 3, 32, 10
    device = torch.device(a.device)
    model = MODELS[a.net_type](a, channels, size, classes).to(device)
    model.train()
    noise_values = sum(b.numel() for n, b in model.named_buffers() if n.endswith("noise"))
    noise_values += sum(p.numel() for n, p in model.named_parameters() if n.endswith("noise"))
    regular = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("noise"))
    trained = [p for p in model.parameters() if p.requires_grad]
    # Printed before training, so that a run that runs out of memory still names its model's size.
    print(f"  parameters:    {regular} regular, {noise_values} noise mask values", flush=True)
    if a.optim == "SGD":
        nesterov = a.momentum != 0
        opt = torch.optim.SGD(trained, lr=a.lr, momentum=a.momentum, dampening=0,
                              nesterov=nesterov, weight_decay=a.weight_decay)
    else:
        opt = torch.optim.Adam(trained, lr=a.lr, weight_decay=a.weight_decay)
    print(f"  FLOPs per image: {training_flops(model, channels, size, classes, device) / 1e9:.3f} GFLOP "
          "(convolutions and linear layers: forward, weight and input gradients)", flush=True)
    perturbed = perturbed_values(model, channels, size, device)
    if perturbed:
        print(f"  perturbed values per image: {perturbed / 1e6:.1f} M (x + level * noise, one per "
              "input channel, mask and pixel of each perturbation layer)", flush=True)
    n = a.batch_size * (a.warmup + a.steps)
    gen = torch.Generator().manual_seed(0)
    images = ((torch.rand(n, channels, size, size, generator=gen) - 0.5) / 0.5).to(device)
    labels = (torch.arange(n) % classes).to(device)
    times = []
    for i in range(a.warmup + a.steps):
        x, y = images[i * a.batch_size:(i + 1) * a.batch_size], labels[i * a.batch_size:(i + 1) * a.batch_size]
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    where = f"{a.threads} threads" if a.device == "cpu" else torch.cuda.get_device_name(device)
    print(f"{a.net_type} batch {a.batch_size} on {a.device} (PyTorch {torch.__version__}, {where}):")
    print(f"  training step: {a.batch_size / median:.1f} images/s (median step {median * 1e3:.1f} ms over {a.steps} steps)")
    print(f"  peak memory:   {peak_rss_mib():.0f} MiB")
    if a.device != "cpu":
        print(f"  peak GPU memory (PyTorch's allocator): {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1:])
