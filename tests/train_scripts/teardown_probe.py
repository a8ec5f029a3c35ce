"""Run a training script and report, on each process, how many DDP-wrapped models are still alive when the process
group is destroyed (`training_runs.end_training` says why there must be none).

    accelerate launch tests/train_scripts/teardown_probe.py SCRIPT [options...]
"""

import gc
import runpy
import sys

import torch.distributed
from torch.nn.parallel import DistributedDataParallel

destroy_process_group = torch.distributed.destroy_process_group


def report_then_destroy(group=None):
    gc.collect()
    alive = sum(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects())
    print(f"DDP models alive at process-group teardown: {alive}", file=sys.stderr, flush=True)
    destroy_process_group(group)


torch.distributed.destroy_process_group = report_then_destroy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
