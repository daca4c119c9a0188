"Tiny float64 networks shared by test_graph.py and test_surgery.py (one per supported structure)."
import torch
import torch.nn.functional as F
from torch import nn


def _randomize_bn(model):
    "Give every BatchNorm non-trivial affine parameters and running statistics."
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=m.bias.dtype) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.running_mean.dtype) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)
    return model


class Traced(nn.Module):
    "An ordinary (non-Sequential) module: nested submodules, torch.flatten in forward."
    def __init__(self, act=nn.Tanh):
        super().__init__()
        self.features = nn.ModuleDict({'conv': nn.Conv2d(2, 4, 3, padding=1), 'bn': nn.BatchNorm2d(4), 'act': act()})
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 5)
        self.fc_act = act()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        f = self.features
        x = self.pool(f['act'](f['bn'](f['conv'](x))))
        x = torch.flatten(x, 1)
        return self.head(self.fc_act(self.fc(x)))


class Functional(nn.Module):
    "Per-channel functional ops between producer and consumer: F.max_pool2d, mean, view."
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(2, 4, 3, padding=1), nn.Tanh()
        self.conv2, self.act2 = nn.Conv2d(4, 3, 1), nn.Tanh()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = F.max_pool2d(self.act(self.conv(x)), 2)
        x = F.dropout(x, 0.0, self.training)
        x = self.act2(self.conv2(x)).mean((2, 3))
        return self.fc(x.view(x.size(0), -1))


def make(name, act=nn.Tanh):
    "A tiny float64 network in eval mode and an example input for it."
    torch.manual_seed(0)
    if name == 'mlp':
        m = nn.Sequential(nn.Linear(3, 6), act(), nn.Linear(6, 5), nn.BatchNorm1d(5), act(), nn.Dropout(0.2), nn.Linear(5, 2))
        x = torch.randn(16, 3)
    elif name == 'nested':
        m = nn.Sequential(nn.Sequential(nn.Linear(3, 4), act()), nn.Sequential(nn.Linear(4, 5), nn.Sequential(act(), nn.Linear(5, 1))))
        x = torch.randn(16, 3)
    elif name == 'conv':
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), act(), nn.Conv2d(4, 3, 3, padding=1),
                          nn.BatchNorm2d(3), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
        x = torch.randn(6, 2, 5, 5)
    elif name in ('flatten', 'flatten_avg'):
        pool = nn.MaxPool2d(2) if name == 'flatten' else nn.AvgPool2d(2)
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), act(), pool, nn.Flatten(),
                          nn.Linear(16, 3), act(), nn.Linear(3, 1))
        x = torch.randn(6, 2, 4, 4)
    elif name == 'mobilenet':
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), act(),            # stem
                          nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), act(),  # depthwise
                          nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), act(),                       # pointwise
                          nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6), act(),
                          nn.Conv2d(6, 5, 1, bias=False), nn.BatchNorm2d(5), act(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(20, 2))
        x = torch.randn(6, 2, 4, 4)
    elif name == 'traced':
        m, x = Traced(act), torch.randn(6, 2, 4, 4)
    elif name == 'functional':
        m, x = Functional(), torch.randn(6, 2, 4, 4)
    else:
        raise KeyError(name)
    return _randomize_bn(m.double()).eval(), x.double()


NETS = ['mlp', 'nested', 'conv', 'flatten', 'flatten_avg', 'mobilenet', 'traced', 'functional']


def copy_root(tmp_path, files, root=None):
    "A stand-in repository root holding copies of `files` (paths relative to the repository root)."
    import shutil
    from pathlib import Path
    root = root or Path(__file__).resolve().parent.parent
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, tmp_path / rel)
    return tmp_path


def edit_paper_value(root, rel, model, metric, value):
    "Set one paper number (model, metric) of a data/paper CSV under `root`."
    import pandas as pd
    p = pd.read_csv(root / rel)
    p.loc[(p.model == model) & (p.metric == metric), 'value'] = value
    p.to_csv(root / rel, index=False)


def edit_recipe(root, rel):
    "Change the learning rate in a result's setup file under `root`."
    md = root / rel
    md.write_text(md.read_text().replace('Recipe: SGD lr 0.1,', 'Recipe: SGD lr 0.2,'))
