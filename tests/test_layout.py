"The engine (graph, kinds, curvature, splitmat, eigen, schemes, select, surgery, grow) never imports the paper subpackage."
import subprocess, sys


def test_engine_does_not_import_paper():
    code = ("import sys, s3d, s3d.grow, s3d.eigen, s3d.surgery, s3d.cost, s3d.atomic, s3d.distributed; "
            "bad = sorted(m for m in sys.modules if m.startswith('s3d.paper')); print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, f"the engine imports {r.stdout.strip()} {r.stderr[-500:]}"
