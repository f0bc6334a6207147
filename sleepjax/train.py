"""Train and evaluate one experiment from a config file.

    python -m sleepjax.train --config=experiments/rule110.py:tiny --workdir=runs/r110 \
        --config.sleep.passes=4

Any config field can be overridden on the command line (``--config.<section>.<key>=value``);
an unknown key or a wrong type fails before anything runs. Rerunning the same command in the
same workdir resumes from its latest checkpoint; a workdir holding a checkpoint of a different
config is refused, naming the fields that differ, and so is a changed ``train.steps`` unless
``--allow_schedule_change`` is given. A workdir in use by another run is refused. Ctrl-C stops
after the current step with a checkpoint (exit 130). Library logs are at WARNING unless
``--verbosity`` is given; errors are one ``error: ...`` line (exit 1).
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from sleepjax.training import cli
from sleepjax.training.trainer import train_and_evaluate

__all__ = ["train_and_evaluate", "main"]

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with a variant: experiments/rule110.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, logs, eval.json).")
_CACHE = flags.DEFINE_string("compilation_cache_dir", None, cli.COMPILATION_CACHE_HELP)
_ALLOW_SCHEDULE_CHANGE = flags.DEFINE_bool("allow_schedule_change", False,
                                           cli.ALLOW_SCHEDULE_CHANGE_HELP)


def main(argv) -> int:
    return cli.run_main(argv, _CONFIG.value, _WORKDIR.value, _CACHE.value, _train_and_report)


def _train_and_report() -> int:
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                allow_schedule_change=_ALLOW_SCHEDULE_CHANGE.value)
    final = result["final_eval"]
    print(json.dumps({"step": final["step"], "tokens_seen": final["tokens_seen"],
                      "loss": final["loss"], "accuracy": final["accuracy"],
                      "wall_time_s": round(result["wall_time_s"], 1),
                      "total_wall_time_s": round(result["total_wall_time_s"], 1)}))
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=cli.make_flags_parser())
