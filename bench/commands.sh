# The commands pnn's benchmarks measure: the reproduction's eight experiment-table commands
# (its README), then cifarnet and lenet, then the paper authors' two updated commands
# (juefeix/pnn.pytorch.update's README, `--code update`). Sourced by bench/compare.sh and scripts/gpu-check.sh.
# shellcheck disable=SC2034
commands=(
  "--net-type resnet18 --nfilters 44 --learning-rate 1e-3"
  "--net-type noiseresnet18 --nfilters 128 --learning-rate 1e-4 --first_filter_size 7"
  "--net-type noiseresnet18 --nfilters 128 --learning-rate 1e-4 --first_filter_size 3"
  "--net-type perturb_resnet18 --nfilters 128 --learning-rate 1e-3 --first_filter_size 3 --filter_size 1"
  "--net-type perturb_resnet18 --nfilters 128 --learning-rate 1e-3 --first_filter_size 0 --filter_size 0 --nmasks 1"
  "--net-type perturb_resnet18 --nfilters 128 --learning-rate 1e-3 --first_filter_size 3 --filter_size 0 --nmasks 64 --unique_masks --mix_maps"
  "--net-type perturb_resnet18 --nfilters 128 --learning-rate 1e-3 --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks"
  "--net-type perturb_resnet18 --nfilters 128 --learning-rate 1e-3 --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks --train_masks"
  "--net-type cifarnet --nfilters 128 --first_filter_size 0 --filter_size 0"
  "--net-type lenet --nfilters 128 --first_filter_size 0 --filter_size 0"
  "--code update --net-type noiseresnet18 --nfilters 128 --learning-rate 1e-4 --first_filter_size 3 --level 0.1 --optim-method Adam"
  "--code update --net-type perturb_resnet18 --nfilters 256 --learning-rate 1e-4 --first_filter_size 0 --filter_size 0 --nmasks 1 --level 0.1 --optim-method Adam"
)
