"""``python -m train`` and ``torchrun --nproc_per_node N -m train``: the ``rvqcodec train``
command, so single- and multi-process runs take the same options."""

import sys

from cli import run

run(["train", *sys.argv[1:]], prog_name="python -m")  # (usage: "python -m train [OPTIONS]")
