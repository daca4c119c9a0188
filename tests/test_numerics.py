"Summaries claim determinism only when every op ran deterministically (issue 18): warn-only alerts are recorded, in workers too."
import warnings
import pandas as pd
import pytest
import s3d.paper.runs as runs
from s3d.paper.runs import pinned_numerics, run_info, run_tasks, write_results

ALERT = ("adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
         "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at https://github.com/pytorch/pytorch/issues")


@pytest.fixture(autouse=True)
def fresh():
    runs._NONDETERMINISTIC.clear()
    yield
    runs._NONDETERMINISTIC.clear()


def _alert(x):
    "What torch does on CUDA for AdaptiveAvgPool2d's backward under warn-only determinism (its exact warning), then work."
    warnings.warn(ALERT)
    return x * 2


def _summary(tmp_path, alert: bool) -> str:
    import matplotlib.pyplot as plt
    with pinned_numerics(1):
        if alert: _alert(1)
        write_results('t', 'smoke', tmp_path, pd.DataFrame(dict(a=[1])), lambda d: plt.figure(), '# T', 'cpu')
    return (tmp_path / 't_smoke.md').read_text()


def test_summary_names_nondeterministic_op_instead_of_claiming_determinism(tmp_path):
    clean = _summary(tmp_path / 'clean', alert=False)
    assert 'deterministic algorithms.' in clean
    md = _summary(tmp_path / 'alert', alert=True)
    assert 'deterministic algorithms.' not in md and 'adaptive_avg_pool2d_backward_cuda' in md


def test_alert_recorded_once_and_shown_once_per_op(monkeypatch):
    seen = []
    monkeypatch.setattr(warnings, 'showwarning', lambda message, *a, **k: seen.append(str(message)))
    with pinned_numerics(1):
        for _ in range(3): _alert(1)
        info = run_info('cpu')
    assert info['deterministic'] is False and info['nondeterministic'] == ['adaptive_avg_pool2d_backward_cuda']
    assert seen == [ALERT]   # shown the first time only


def test_alerts_in_worker_processes_reach_the_parent():
    with pinned_numerics(1):
        assert run_tasks(_alert, [(1,), (2,)], jobs=2) == [2, 4]
        info = run_info('cpu')
    assert info['nondeterministic'] == ['adaptive_avg_pool2d_backward_cuda'] and not info['deterministic']


def test_summary_says_what_differs_under_several_processes(monkeypatch):
    import s3d.distributed as sd
    from s3d.paper.runs import run_info_line
    assert 'Data-parallel' not in run_info_line(run_info('cpu'))
    monkeypatch.setattr(sd, 'world_size', lambda: 2)
    line = run_info_line(run_info('cpu'))
    assert 'over 2 processes' in line and 'BatchNorm statistics synchronised' in line and 'dropout' in line
