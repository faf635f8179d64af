"""Training: four quantization pipelines over one training loop.

* ``steps``: the pure jitted steps (loss, train, distillation, eval, calibration);
* ``loop``: ``fit`` one phase, ``evaluate``, ``calibrate``, the epoch's batches;
* ``pipelines``: one function per mode (``qat``, ``qt``, ``ptq``, ``srq``),
  named by ``conf/mode/*.yaml``, over shared phases;
* ``signals``: SIGTERM/SIGINT as a stop flag, ``Preempted``;
* ``experiment``: ``run(cfg, out_dir)``, the whole run.
"""

from snnexp.errors import ConfigError, NumericalError
from snnexp.rundir import load_deployed
from snnexp.train.experiment import run
from snnexp.train.loop import Arrays, LoopSettings, Trainer, epoch_perm, evaluate, fit, step_chunks
from snnexp.train.signals import Preempted
from snnexp.train.steps import Augment, augment_batch, loss_and_logits, train_steps

__all__ = [
    "Arrays", "Augment", "ConfigError", "LoopSettings", "NumericalError", "Preempted", "Trainer", "augment_batch",
    "epoch_perm", "evaluate", "fit", "load_deployed", "loss_and_logits", "run", "step_chunks", "train_steps",
]
