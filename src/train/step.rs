//! A training step's forward and backward pass: on one device, or data parallel over several
//! GPUs of one machine.
//!
//! Data parallel is PyTorch's `nn.DataParallel` on burn's multi-device tensors:
//! - The batch is cut into one consecutive part per device (`Batch::split`).
//! - Each device holds a replica of the model. Before every step it takes the model's current
//!   parameters under the model's own parameter ids, so that its gradients are the model's.
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

    /// Seeds every device's random stream (dropout, RReLU) for a step: the model's device with
    /// `seed` itself, as a one-device run, the others with seeds derived from it.
    pub fn seed(&self, seed: u64) {
        self.device.seed(seed);
        for (i, replica) in self.replicas.iter().enumerate() {
            replica.device.seed(crate::data::loader::epoch_seed(seed, i + 1));
        }
    }

    /// Forward and backward of `model` on `batch`. Each part holds at least two images
    /// (BatchNorm cannot normalise one), so a small last batch uses fewer devices.
    pub fn forward_backward(&mut self, model: &Net, batch: &Batch, loss_fn: &CrossEntropyLoss) -> Result<StepResult> {
        let parts = (1 + self.replicas.len()).min(batch.len() / 2).max(1);
        if parts == 1 {
            return self.on_model_device(model, batch, loss_fn);
        }
        let snapshot = Snapshot::of(model);
        let pieces = batch.split(parts);
        let mut losses = Vec::with_capacity(parts);
        let mut corrects = Vec::with_capacity(parts);
        let mut graphs = Vec::with_capacity(parts);
        // Every device's forward pass is dispatched before anything is read back.
        for (i, piece) in pieces.iter().enumerate() {
            let (net, device) = match i {
                0 => (model, &self.device),
                _ => {
                    let replica = &mut self.replicas[i - 1];
                    replica.model = snapshot.load_into(replica.model.clone(), &replica.device);
                    (&replica.model, &replica.device)
                }
            };
            let (images, labels) = piece.to_tensors(device);
            let output = net.forward(images);
            let share = piece.len() as f64 / batch.len() as f64;
            let loss = loss_fn.forward(output.clone(), labels.clone()).mul_scalar(share);
            corrects.push(correct_predictions(output, labels));
            losses.push(loss.clone());
            graphs.push(loss);
        }
        let mut loss = 0.0;
        let mut correct = 0;
        for (part_loss, part_correct) in losses.into_iter().zip(corrects) {
            loss += device::read_scalar::<_, f32>(part_loss, "training step")? as f64;
            correct += device::read_scalar::<_, i64>(part_correct, "count of correct predictions")? as usize;
        }
        let mut parts_grads = Vec::with_capacity(parts);
        for (i, graph) in graphs.into_iter().enumerate() {
            let grads = match i {
                0 => GradientsParams::from_grads(graph.backward(), model),
                _ => GradientsParams::from_grads(graph.backward(), &self.replicas[i - 1].model)
                    .to_device(&self.device, model),
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
        let loss_value = device::read_scalar::<_, f32>(loss.clone(), "training step")? as f64;
        let correct =
            device::read_scalar::<_, i64>(correct_predictions(output, labels), "count of correct predictions")?
                as usize;
        Ok(StepResult {
            loss: loss_value,
            correct,
            grads: GradientsParams::from_grads(loss.backward(), model),
        })
    }
}

/// How many of `output`'s rows predict `labels`, still on the device.
pub fn correct_predictions(output: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1, Int> {
    let predicted = output.argmax(1).squeeze_dim::<1>(1);
    predicted.equal(labels).int().sum()
}

/// The model's parameters and running statistics, in visiting order, flattened and without
/// autodiff, each with its id and shape.
struct Snapshot {
    values: Vec<(ParamId, Tensor<1>, Vec<usize>)>,
}

impl Snapshot {
    fn of(model: &Net) -> Self {
        let mut snapshot = Self { values: Vec::new() };
        model.visit(&mut snapshot);
        snapshot
    }

    /// `replica` (built from the same configuration, so visited in the same order) with the
    /// snapshot's values on `device` and the snapshot's parameter ids. Each parameter keeps the
    /// replica's own choice of whether it is trained (the noise masks are not, by default).
    fn load_into(&self, replica: Net, device: &Device) -> Net {
        let mut loader = SnapshotLoader {
            values: self.values.iter(),
            device: device.clone().without_autodiff(),
        };
        let replica = replica.map(&mut loader);
        assert!(
            loader.values.next().is_none(),
            "a replica has fewer parameters than its model"
        );
        replica
    }
}

impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().without_autodiff();
        let shape = value.dims().to_vec();
        let flat = value.reshape([shape.iter().product::<usize>()]);
        self.values.push((param.id, flat, shape));
    }
}

struct SnapshotLoader<'a> {
    values: std::slice::Iter<'a, (ParamId, Tensor<1>, Vec<usize>)>,
    device: Device,
}

impl ModuleMapper for SnapshotLoader<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, shape) = self
            .values
            .next()
            .expect("a replica has more parameters than its model");
        let (_, old, mapper) = param.consume();
        let shape: [usize; D] = shape
            .as_slice()
            .try_into()
            .expect("a replica's parameter has the model's rank");
        assert_eq!(old.dims(), shape, "a replica's parameter has the model's shape");
        let mut value = value.clone().to_device(&self.device).reshape(shape).autodiff();
        if old.is_require_grad() {
            value = value.require_grad();
        }
        Param::from_mapped_value(*id, value, mapper)
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
