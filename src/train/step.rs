//! A training step's forward and backward pass: on one device, or data parallel over several
//! GPUs of one machine.
//!
//! Data parallel is PyTorch's `nn.DataParallel` on burn's multi-device tensors:
//! - The batch is cut into one consecutive part per device (`Batch::split`).
//! - Each device holds a replica of the model. Before every step it takes the model's current
//!   parameters under the model's own parameter ids, so that its gradients are the model's.
//!   Values and gradients cross between devices packed into one tensor each way.
//! - Each part's loss is scaled by its share of the batch, so that the summed gradients are
//!   those of the whole batch's mean loss, as on one device.
//! - The gradients are summed on the model's device, where the optimizer steps once.
//! - BatchNorm normalises each part with its own statistics (no SyncBatchNorm), and the model
//!   keeps the running statistics of its own part only, as DataParallel keeps device 0's.
//!
//! One thread dispatches every device's work. A GPU runs what it is given asynchronously, so
//! the devices compute their parts at the same time: the first read of a result, after every
//! forward pass has been dispatched, is where the thread waits. Threads per device would also
//! overlap the dispatching itself; measuring whether that pays needs a machine with two GPUs.

use anyhow::Result;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};

use crate::config::Config;
use crate::data::Batch;
use crate::device;
use crate::models::{self, Geometry, Net};

/// What one step computed: the batch's mean loss, its correct predictions and the gradients,
/// on the model's device.
pub struct StepResult {
    pub loss: f64,
    pub correct: usize,
    pub grads: GradientsParams,
}

/// The devices a training step runs on.
pub struct StepDevices {
    /// The model's device, with autodiff.
    device: Device,
    replicas: Vec<Replica>,
}

/// A copy of the model on a further device.
struct Replica {
    device: Device,
    model: Net,
}

impl StepDevices {
    /// `device` is the model's; each of `others` gets a replica of the model `config`
    /// describes (its values are the model's from the first step on). Devices without autodiff
    /// are given it.
    pub fn new(config: &Config, geometry: Geometry, device: &Device, others: &[Device]) -> Result<Self> {
        let replicas = others
            .iter()
            .map(|d| {
                let device = d.clone().autodiff();
                Ok(Replica {
                    model: models::build_for(config, geometry, &device)?,
                    device,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            device: device.clone().autodiff(),
            replicas,
        })
    }

    /// Whether the model lives on a GPU (so its first step compiles kernels).
    pub fn on_gpu(&self) -> bool {
        self.device.clone().without_autodiff() != Device::flex()
    }

    /// Seeds every device's random stream (dropout, RReLU) for a step: the model's device with
    /// `seed` itself, as a one-device run, the others with seeds derived from it. The cubecl
    /// backends keep one generator for all their devices, so the model's device is seeded last:
    /// there the step's draws are one stream from `seed`, in the fixed order of the dispatch.
    pub fn seed(&self, seed: u64) {
        for (i, replica) in self.replicas.iter().enumerate() {
            replica.device.seed(crate::data::loader::epoch_seed(seed, i + 1));
        }
        self.device.seed(seed);
    }

    /// Forward and backward of `model` on `batch`. Each part holds at least two images
    /// (BatchNorm cannot normalise one), so a small last batch uses fewer devices.
    pub fn forward_backward(&mut self, model: &Net, batch: &Batch, loss_fn: &CrossEntropyLoss) -> Result<StepResult> {
        let parts = (1 + self.replicas.len()).min(batch.len() / 2).max(1);
        if parts == 1 {
            return self.on_model_device(model, batch, loss_fn);
        }
        // The replicas take the model's values first: a copy between devices may wait for the
        // source device's queue, which must not hold the first part's forward pass yet.
        let values = Packed::of(model, Source::Values);
        for replica in &mut self.replicas[..parts - 1] {
            replica.model = values
                .clone()
                .to_device(&replica.device)
                .load_into(replica.model.clone());
        }
        let pieces = batch.split(parts);
        let mut losses = Vec::with_capacity(parts);
        let mut corrects = Vec::with_capacity(parts);
        // Every device's forward pass is dispatched before anything is read back.
        for (i, piece) in pieces.iter().enumerate() {
            let (net, device) = match i {
                0 => (model, &self.device),
                _ => (&self.replicas[i - 1].model, &self.replicas[i - 1].device),
            };
            let (images, labels) = piece.to_tensors(device);
            let output = net.forward(images);
            let share = piece.len() as f64 / batch.len() as f64;
            let loss = loss_fn.forward(output.clone(), labels.clone()).mul_scalar(share);
            corrects.push(correct_predictions(output, labels));
            losses.push(loss);
        }
        let mut loss = 0.0;
        let mut correct = 0;
        for (part_loss, part_correct) in losses.iter().zip(corrects) {
            loss += read_loss(part_loss.clone())?;
            correct += read_count(part_correct)?;
        }
        let mut parts_grads = Vec::with_capacity(parts);
        for (i, graph) in losses.into_iter().enumerate() {
            let grads = match i {
                0 => GradientsParams::from_grads(graph.backward(), model),
                _ => {
                    let replica = &self.replicas[i - 1].model;
                    let grads = GradientsParams::from_grads(graph.backward(), replica);
                    Packed::of(replica, Source::Gradients(&grads))
                        .to_device(&self.device)
                        .into_gradients(model)
                }
            };
            parts_grads.push(grads);
        }
        Ok(StepResult {
            loss,
            correct,
            grads: sum_gradients(model, parts_grads),
        })
    }

    /// The step of a one-device run: the loss and the count are read before the backward pass,
    /// so that a failed forward pass is reported as such.
    fn on_model_device(&self, model: &Net, batch: &Batch, loss_fn: &CrossEntropyLoss) -> Result<StepResult> {
        let (images, labels) = batch.to_tensors(&self.device);
        let output = model.forward(images);
        let loss = loss_fn.forward(output.clone(), labels.clone());
        let loss_value = read_loss(loss.clone())?;
        let correct = count_correct(output, labels)?;
        Ok(StepResult {
            loss: loss_value,
            correct,
            grads: GradientsParams::from_grads(loss.backward(), model),
        })
    }
}

/// How many of `output`'s rows predict `labels`, still on the device.
fn correct_predictions(output: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1, Int> {
    let predicted = output.argmax(1).squeeze_dim::<1>(1);
    predicted.equal(labels).int().sum()
}

/// How many of `output`'s rows predict `labels`, read back from the device.
pub fn count_correct(output: Tensor<2>, labels: Tensor<1, Int>) -> Result<usize> {
    read_count(correct_predictions(output, labels))
}

fn read_count(correct: Tensor<1, Int>) -> Result<usize> {
    Ok(device::read_scalar::<_, i64>(correct, "count of correct predictions")? as usize)
}

fn read_loss(loss: Tensor<1>) -> Result<f64> {
    Ok(device::read_scalar::<_, f32>(loss, "training step")? as f64)
}

/// Tensors of a model's parameters (their values or their gradients), in visiting order, packed
/// into one flat tensor without autodiff, so that each moves between devices in one copy: a copy
/// per tensor would make the devices wait for each other a hundred times a step.
#[derive(Clone)]
struct Packed {
    flat: Tensor<1>,
    /// Each tensor's parameter, offset in `flat` and shape.
    entries: Vec<(ParamId, usize, Vec<usize>)>,
}

/// What [`Packed`] holds of each parameter.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Its value (running statistics and fixed masks included).
    Values,
    /// Its gradient, where it has one.
    Gradients(&'a GradientsParams),
}

impl Packed {
    fn of(model: &Net, source: Source) -> Self {
        struct Packer<'a> {
            source: Source<'a>,
            tensors: Vec<Tensor<1>>,
            entries: Vec<(ParamId, usize, Vec<usize>)>,
            len: usize,
        }
        impl ModuleVisitor for Packer<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let tensor = match self.source {
                    Source::Values => Some(param.val()),
                    Source::Gradients(grads) => grads.get::<D>(param.id),
                };
                let Some(tensor) = tensor else { return };
                let shape = tensor.dims().to_vec();
                let n: usize = shape.iter().product();
                self.entries.push((param.id, self.len, shape));
                self.len += n;
                self.tensors.push(tensor.without_autodiff().reshape([n]));
            }
        }
        let mut packer = Packer {
            source,
            tensors: Vec::new(),
            entries: Vec::new(),
            len: 0,
        };
        model.visit(&mut packer);
        // Every model has parameters, and each of them a gradient after a backward pass.
        assert!(!packer.tensors.is_empty(), "nothing to pack");
        Self {
            flat: Tensor::cat(packer.tensors, 0),
            entries: packer.entries,
        }
    }

    /// The same tensors on `device` (without autodiff), in one copy.
    fn to_device(self, device: &Device) -> Self {
        Self {
            flat: self.flat.to_device(&device.clone().without_autodiff()),
            entries: self.entries,
        }
    }

    /// Entry `i`'s parameter and tensor, which must be of rank D.
    fn tensor<const D: usize>(&self, i: usize) -> (ParamId, Tensor<D>) {
        let (id, offset, shape) = &self.entries[i];
        let n: usize = shape.iter().product();
        let shape: [usize; D] = shape.as_slice().try_into().expect("packed with the model's rank");
        (*id, self.flat.clone().slice(*offset..offset + n).reshape(shape))
    }

    /// `replica` (built from the same configuration, so visited in the same order) with these
    /// values and their parameter ids. Each parameter keeps the replica's own choice of whether
    /// it is trained (the noise masks are not, by default).
    fn load_into(&self, replica: Net) -> Net {
        struct Loader<'a> {
            packed: &'a Packed,
            next: usize,
        }
        impl ModuleMapper for Loader<'_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let (id, value) = self.packed.tensor::<D>(self.next);
                self.next += 1;
                let (_, old, mapper) = param.consume();
                assert_eq!(old.dims(), value.dims(), "a replica's parameter has the model's shape");
                let mut value = value.autodiff();
                if old.is_require_grad() {
                    value = value.require_grad();
                }
                Param::from_mapped_value(id, value, mapper)
            }
        }
        let mut loader = Loader { packed: self, next: 0 };
        let replica = replica.map(&mut loader);
        assert_eq!(loader.next, self.entries.len(), "a replica has the model's parameters");
        replica
    }

    /// The packed gradients of `model`'s parameters, as the optimizer takes them.
    fn into_gradients(self, model: &Net) -> GradientsParams {
        struct Unpacker<'a> {
            packed: &'a Packed,
            next: usize,
            grads: GradientsParams,
        }
        impl ModuleVisitor for Unpacker<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if self.packed.entries.get(self.next).is_some_and(|e| e.0 == param.id) {
                    let (id, grad) = self.packed.tensor::<D>(self.next);
                    self.grads.register(id, grad);
                    self.next += 1;
                }
            }
        }
        let mut unpacker = Unpacker {
            packed: &self,
            next: 0,
            grads: GradientsParams::new(),
        };
        model.visit(&mut unpacker);
        assert_eq!(
            unpacker.next,
            self.entries.len(),
            "every packed gradient is the model's"
        );
        unpacker.grads
    }
}

/// The sum of each parameter's gradients from every part, all on the model's device, added in
/// the order of the devices (so the result does not depend on timing).
fn sum_gradients(model: &Net, parts: Vec<GradientsParams>) -> GradientsParams {
    struct Sum {
        parts: Vec<GradientsParams>,
        total: GradientsParams,
    }
    impl ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let sum = self
                .parts
                .iter_mut()
                .filter_map(|grads| grads.remove::<D>(param.id))
                .reduce(|a, b| a + b);
            if let Some(sum) = sum {
                self.total.register(param.id, sum);
            }
        }
    }
    let mut sum = Sum {
        parts,
        total: GradientsParams::new(),
    };
    model.visit(&mut sum);
    sum.total
}
