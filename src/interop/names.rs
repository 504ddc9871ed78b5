//! Where each of a pnn model's tensors lives in the reference's `state_dict`: its key (and the
//! other keys PyTorch lists for the same tensor, when the reference registers one module in two
//! places) and how its layout differs. Read off the model itself, so that a table always
//! describes exactly the tensors the model has.
//!
//! The reference's module trees (models.py of michaelklachko/pnn.pytorch, and of
//! juefeix/pnn.pytorch.update for `--code update`):
//! - `PerturbLayer`: `noise`, then `layers` = [conv, BatchNorm, act], `mix_layers` = [conv,
//!   BatchNorm, act], and the activation module again as `act`.
//! - lenet / cifarnet: `first_layers` (perturbation layers with pooling between them) and
//!   `last_layers` = [dropout, linear1, batch_norm, act, dropout, linear2], whose modules are
//!   also registered as `linear1`, `linear2`, `act` and `batch_norm`.
//! - resnet18: `conv1`, `bn1`, `layer1..4.{0,1}.{conv1,bn1,conv2,bn2,shortcut.{0,1}}`, `linear`.
//! - noiseresnet18: `pre_layers` = [conv, BatchNorm, ...], blocks whose `layers` = [NoiseLayer,
//!   pool, BatchNorm, ReLU, NoiseLayer, BatchNorm], a NoiseLayer's `layers` = [ReLU,
//!   BatchNorm, conv] and its `noise`, which the reference keeps as a plain attribute drawn at
//!   the first batch (so most of its files lack it).
//! - perturb_resnet18: `pre_layers.0` (the first layer), blocks whose `layers` = [PerturbLayer,
//!   pool, PerturbLayer], `linear`; under the update `pre_layers` = [PerturbLayerFirst, (pool),
//!   conv, BatchNorm, act], a PerturbLayerFirst's `layers` = [BatchNorm, sigmoid, conv,
//!   BatchNorm, sigmoid].

use burn::nn::Linear;
use burn::nn::conv::Conv2d;

use crate::layer::activation::Activation;
use crate::layer::perturb::PerturbLayer;
use crate::layer::perturb_first::{PerturbFirst, PerturbFirstLayer};
use crate::models::noise_resnet::NoiseLayer;
use crate::models::perturb_resnet::FirstLayer;
use crate::models::{CifarNet, LeNet, Net, NoiseResNet18, PerturbResNet18, ResNet18};

/// How a tensor's PyTorch layout differs from pnn's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The same shape and element order.
    Same,
    /// A linear layer's weight: pnn keeps [in, out], PyTorch [out, in].
    Transposed,
    /// pnn keeps a leading axis of 1 that PyTorch does not have (noiseresnet18's noise,
    /// [1, C, H, W] in pnn, [C, H, W] in PyTorch).
    LeadingOne,
}

impl Layout {
    /// The PyTorch shape of a tensor of pnn shape `shape`.
    pub fn torch_shape(self, shape: &[usize]) -> Vec<usize> {
        match self {
            Layout::Same => shape.to_vec(),
            Layout::Transposed => shape.iter().rev().copied().collect(),
            Layout::LeadingOne => shape[1..].to_vec(),
        }
    }
}

/// One tensor of a pnn model and its names in the reference.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its path in pnn's module tree (burn's field names, enum variants left out).
    pub path: String,
    /// Its keys in the reference's `state_dict`; a module registered twice there is listed
    /// under each name.
    pub keys: Vec<String>,
    pub layout: Layout,
    /// Absent from most reference files (noiseresnet18's noise): importing keeps pnn's own.
    pub optional: bool,
}

/// The table of a model: every tensor it has, in the order PyTorch lists them.
pub fn table(net: &Net) -> Vec<Entry> {
    let mut t = Table::default();
    match net {
        Net::Lenet(m) => lenet(&mut t, m),
        Net::Cifarnet(m) => cifarnet(&mut t, m),
        Net::Resnet18(m) => resnet18(&mut t, m),
        Net::Noiseresnet18(m) => noiseresnet18(&mut t, m),
        Net::PerturbResnet18(m) => perturb_resnet18(&mut t, m),
    }
    t.0
}

/// Keys BatchNorm keeps in a `state_dict` that pnn has no tensor for: PyTorch counts batches
/// only to average with `momentum=None`, which the reference never uses.
pub fn is_batch_counter(key: &str) -> bool {
    key.ends_with(".num_batches_tracked")
}

#[derive(Default)]
struct Table(Vec<Entry>);

/// `prefix.leaf`, or `leaf` at the root.
fn join(prefix: &str, leaf: &str) -> String {
    if prefix.is_empty() {
        leaf.to_string()
    } else {
        format!("{prefix}.{leaf}")
    }
}

impl Table {
    fn add(&mut self, path: String, keys: Vec<String>, layout: Layout) {
        self.0.push(Entry {
            path,
            keys,
            layout,
            optional: false,
        });
    }

    /// A tensor under the same leaf name in pnn and in every one of the module's PyTorch names.
    fn leaf(&mut self, path: &str, leaf: &str, modules: &[String], torch_leaf: &str, layout: Layout) {
        let keys = modules.iter().map(|m| join(m, torch_leaf)).collect();
        self.add(join(path, leaf), keys, layout);
    }

    fn conv(&mut self, path: &str, conv: &Conv2d, module: &str) {
        let modules = [module.to_string()];
        self.leaf(path, "weight", &modules, "weight", Layout::Same);
        if conv.bias.is_some() {
            self.leaf(path, "bias", &modules, "bias", Layout::Same);
        }
    }

    fn batch_norm(&mut self, path: &str, modules: &[String]) {
        for leaf in ["weight", "bias", "running_mean", "running_var"] {
            self.leaf(path, leaf, modules, leaf, Layout::Same);
        }
    }

    fn linear(&mut self, path: &str, linear: &Linear, modules: &[String]) {
        self.leaf(path, "weight", modules, "weight", Layout::Transposed);
        if linear.bias.is_some() {
            self.leaf(path, "bias", modules, "bias", Layout::Same);
        }
    }

    /// A PReLU's slope (the only activation with a parameter).
    fn activation(&mut self, path: &str, act: &Activation, modules: &[String]) {
        if act.prelu_alpha.is_some() {
            self.leaf(path, "prelu_alpha", modules, "weight", Layout::Same);
        }
    }

    /// The reference's `PerturbLayer` (also the update's first layer when it is a convolution:
    /// the same module tree with a sigmoid).
    fn perturb_layer(&mut self, path: &str, layer: &PerturbLayer, module: &str) {
        if layer.noise.is_some() {
            self.add(join(path, "noise"), vec![join(module, "noise")], Layout::Same);
        }
        self.conv(&join(path, "conv"), &layer.conv, &join(module, "layers.0"));
        self.batch_norm(&join(path, "bn"), &[join(module, "layers.1")]);
        let mut act_modules = vec![join(module, "act"), join(module, "layers.2")];
        if let Some(mix) = &layer.mix {
            self.conv(&join(path, "mix.conv"), &mix.conv, &join(module, "mix_layers.0"));
            self.batch_norm(&join(path, "mix.bn"), &[join(module, "mix_layers.1")]);
            act_modules.push(join(module, "mix_layers.2"));
        }
        self.activation(&join(path, "act"), &layer.act, &act_modules);
    }

    /// lenet's and cifarnet's classifier: `last_layers` = [dropout, linear1, batch_norm, act,
    /// dropout, linear2], each module registered on the model too.
    fn classifier(&mut self, head: &crate::layer::classifier::ClassifierHead) {
        let both = |own: &str, index: usize| vec![own.to_string(), format!("last_layers.{index}")];
        self.linear("head.linear1", &head.linear1, &both("linear1", 1));
        self.batch_norm("head.batch_norm", &both("batch_norm", 2));
        self.activation("head.act", &head.act, &both("act", 3));
        self.linear("head.linear2", &head.linear2, &both("linear2", 5));
    }

    /// A projection shortcut, `shortcut` = [conv, BatchNorm].
    fn shortcut(&mut self, path: &str, shortcut: Option<&crate::layer::norm_conv::ConvBn>, module: &str) {
        if let Some(s) = shortcut {
            self.conv(&join(path, "shortcut.conv"), &s.conv, &join(module, "shortcut.0"));
            self.batch_norm(&join(path, "shortcut.bn"), &[join(module, "shortcut.1")]);
        }
    }

    fn noise_layer(&mut self, path: &str, layer: &NoiseLayer, module: &str) {
        self.0.push(Entry {
            path: join(path, "noise_buffer"),
            keys: vec![join(module, "noise")],
            layout: Layout::LeadingOne,
            optional: true,
        });
        self.batch_norm(&join(path, "bn"), &[join(module, "layers.1")]);
        self.conv(&join(path, "conv"), &layer.conv, &join(module, "layers.2"));
    }

    /// The update's first block: `pre_layers` = [PerturbLayerFirst, (pool), conv, BatchNorm, act].
    fn update_first(&mut self, first: &PerturbFirst) {
        match &first.layer {
            PerturbFirstLayer::Noise(n) => {
                self.add(
                    "first.layer.noise".into(),
                    vec!["pre_layers.0.noise".into()],
                    Layout::Same,
                );
                self.batch_norm("first.layer.bn_perturbed", &["pre_layers.0.layers.0".into()]);
                self.conv("first.layer.conv", &n.conv, "pre_layers.0.layers.2");
                self.batch_norm("first.layer.bn", &["pre_layers.0.layers.3".into()]);
                if let Some(mix) = &n.mix {
                    self.conv("first.layer.mix.conv", &mix.conv, "pre_layers.0.mix_layers.0");
                    self.batch_norm("first.layer.mix.bn", &["pre_layers.0.mix_layers.1".into()]);
                }
            }
            PerturbFirstLayer::Conv(layer) => self.perturb_layer("first.layer", layer, "pre_layers.0"),
        }
        let reduce = 1 + usize::from(first.pool.is_some());
        self.conv("first.reduce.conv", &first.reduce.conv, &format!("pre_layers.{reduce}"));
        self.batch_norm("first.reduce.bn", &[format!("pre_layers.{}", reduce + 1)]);
        self.activation(
            "first.act",
            &first.act,
            &["act".into(), format!("pre_layers.{}", reduce + 2)],
        );
    }
}

/// A ResNet's block `b` (two per stage): `layer{stage}.{index}`.
fn stage_block(b: usize) -> String {
    format!("layer{}.{}", b / 2 + 1, b % 2)
}

fn lenet(t: &mut Table, m: &LeNet) {
    // first_layers = [layer, pool, layer, pool, layer, pool]
    for (i, layer) in [&m.layer1, &m.layer2, &m.layer3].into_iter().enumerate() {
        t.perturb_layer(&format!("layer{}", i + 1), layer, &format!("first_layers.{}", 2 * i));
    }
    t.classifier(&m.head);
}

fn cifarnet(t: &mut Table, m: &CifarNet) {
    // first_layers = [layer, layer, pool] x 3
    for (i, layer) in m.layers.iter().enumerate() {
        t.perturb_layer(&format!("layers.{i}"), layer, &format!("first_layers.{}", i + i / 2));
    }
    t.classifier(&m.head);
}

fn resnet18(t: &mut Table, m: &ResNet18) {
    t.conv("stem.conv", &m.stem.conv, "conv1");
    t.batch_norm("stem.bn", &["bn1".into()]);
    for (b, block) in m.blocks.iter().enumerate() {
        let (path, module) = (format!("blocks.{b}"), stage_block(b));
        t.conv(
            &format!("{path}.conv1.conv"),
            &block.conv1.conv,
            &format!("{module}.conv1"),
        );
        t.batch_norm(&format!("{path}.conv1.bn"), &[format!("{module}.bn1")]);
        t.conv(
            &format!("{path}.conv2.conv"),
            &block.conv2.conv,
            &format!("{module}.conv2"),
        );
        t.batch_norm(&format!("{path}.conv2.bn"), &[format!("{module}.bn2")]);
        t.shortcut(&path, block.shortcut.as_ref(), &module);
    }
    t.linear("linear", &m.linear, &["linear".into()]);
}

fn noiseresnet18(t: &mut Table, m: &NoiseResNet18) {
    t.conv("stem.conv", &m.stem.conv, "pre_layers.0");
    t.batch_norm("stem.bn", &["pre_layers.1".into()]);
    for (b, block) in m.blocks.iter().enumerate() {
        let (path, module) = (format!("blocks.{b}"), stage_block(b));
        t.noise_layer(&format!("{path}.noise1"), &block.noise1, &format!("{module}.layers.0"));
        t.batch_norm(&format!("{path}.bn1"), &[format!("{module}.layers.2")]);
        t.noise_layer(&format!("{path}.noise2"), &block.noise2, &format!("{module}.layers.4"));
        t.batch_norm(&format!("{path}.bn2"), &[format!("{module}.layers.5")]);
        t.shortcut(&path, block.shortcut.as_ref(), &module);
    }
    t.linear("linear", &m.linear, &["linear".into()]);
}

fn perturb_resnet18(t: &mut Table, m: &PerturbResNet18) {
    match &m.first {
        FirstLayer::Reproduction(layer) => t.perturb_layer("first", layer, "pre_layers.0"),
        FirstLayer::Update(first) => t.update_first(first),
    }
    for (b, block) in m.blocks.iter().enumerate() {
        let (path, module) = (format!("blocks.{b}"), stage_block(b));
        t.perturb_layer(&format!("{path}.layer1"), &block.layer1, &format!("{module}.layers.0"));
        t.perturb_layer(&format!("{path}.layer2"), &block.layer2, &format!("{module}.layers.2"));
        t.shortcut(&path, block.shortcut.as_ref(), &module);
    }
    t.linear("linear", &m.linear, &["linear".into()]);
}
