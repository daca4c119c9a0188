"""s3d: signed splitting steepest descent (S3D) for PyTorch networks.

The public entry points live at the top level:

- `register_layer(cls, kind)`, `register_activation(cls, curvature=..., smooth=...)`: teach s3d a module type (`s3d.kinds`);
- `split_groups(model, example_input)`: the splittable layers of a model, `.skipped` the others and why (`s3d.graph`);
- `splitting_matrices(model, group, loss_fn, batches)`: exact splitting matrices (`s3d.splitmat`);
- `extreme_eigenpairs(model, groups, loss_fn, batches, method)`: lambda_min/max and eigenvectors (`s3d.eigen`);
- `split_gain`, `split_scheme`, `split_schemes`: optimal signed splits (`s3d.schemes`);
- `split_neurons(model, group, neurons, schemes, eps)`, `apply_splits(model, plan, eps)`: function-preserving surgery, one group or a whole round atomically (`s3d.surgery`);
- `score_neurons`, `select_neurons`: every neuron's optimal split and the choice of which to split; round targets
  (`widths`, `growth_factor`), allocation and neuron costs live there too (`s3d.select`);
- `grow(...)`, `GrowConfig`, `GrowConfig.preset(name)`: the S2D/S3D loop, every argument checked before the first
  epoch, fixed or line-searched step; `split_round(...)` is one growth step for users who keep their own training
  loop; `scratch_model` rebuilds a grown architecture freshly initialised (`s3d.grow`);
- `s3d.controls`: growth controls, one registered class each (`RandomGrowth`, `Net2Net`, `GradMax`, `Scratch`;
  `register_control` adds one);
- `s3d.checkpoint`: `load_grown_state` reloads a grown checkpoint; `TrainState` lets a `train_fn` resume at its last
  finished epoch; `load_checkpoint` reads one safely (`weights_only`), raising `CheckpointError` for a bad one;
- `s3d.distributed`: growth under `torchrun` (`init_distributed`, `grow(..., dist=...)`, `ShardedLoader`);
- `count_params_flops(model, example_input)`: the one shared parameter/FLOP counter (`s3d.cost`).
"""
__version__ = "0.1.0"

from s3d.schemes import split_gain, split_scheme, split_schemes, SplitScheme, SplitSchemes
from s3d.kinds import register_layer, register_activation, LayerKind, Refusal, layer_kind
from s3d.graph import split_groups, SplitGroup, Consumer
from s3d.splitmat import splitting_matrices
from s3d.eigen import extreme_eigenpairs, EigenPairs
from s3d.select import score_neurons, select_neurons
from s3d.surgery import split_neurons, apply_splits, remap_channels, remap_optimizer
from s3d.checkpoint import Checkpoint, CheckpointError, TrainState, load_checkpoint, load_grown_state
from s3d.controls import CONTROLS, Control, register_control, RandomGrowth, Net2Net, GradMax, Scratch
from s3d.grow import grow, GrowConfig, GrowResult, split_round, scratch_model, with_arg_docs as _with_arg_docs
from s3d.select import neuron_costs, allocate, round_targets
from s3d.cost import count_params_flops

# help() and Jupyter's `?` list every argument: the docments (comments on the argument lines) carried into docstrings.
_SPLIT_SCHEMES_ARGS = dict(  # `split_schemes` has no docments yet: these stand in until it has
    lam_min='(n,) smallest eigenvalue of each neuron\'s splitting matrix',
    v_min='(n, d) its unit eigenvector',
    lam_max='(n,) largest eigenvalue',
    v_max='(n, d) its unit eigenvector',
    m='maximal copies per neuron (2, 3 or 4)',
    c='weight budget sum|w| <= c (1 = S2D)',
)
for _obj in (grow, split_round, GrowConfig, GrowResult, split_groups, extreme_eigenpairs, split_neurons,
             apply_splits, score_neurons, select_neurons, scratch_model, neuron_costs, splitting_matrices):
    _with_arg_docs(_obj)
_with_arg_docs(split_schemes, _SPLIT_SCHEMES_ARGS)
del _obj
