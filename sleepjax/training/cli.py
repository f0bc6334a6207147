"""What ``python -m sleepjax.train`` and ``python -m sleepjax.sweep`` share: quiet library logs,
one-line errors for bad configs and failed runs, and the exit codes.

Exit codes: 0 done; 1 an error (config, workdir, a checkpoint that could not be read or
written, non-finite training), printed as
``error: ...``; 130 stopped by Ctrl-C / SIGTERM, printed as ``interrupted: ...``.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Callable, NoReturn, Sequence

from absl import flags
from absl import logging as absl_logging

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130   # the shell's code for a SIGINT-terminated command

ALLOW_SCHEDULE_CHANGE_HELP = (
    "Resume even though train.steps (which shapes the learning-rate schedule) differs from "
    "the checkpoint's; the change is logged. Without it such a resume is refused.")


COMPILATION_CACHE_HELP = (
    "JAX persistent compilation cache directory: runs that share shapes and constants skip XLA "
    "compilation. Default: $SLEEPJAX_CACHE_DIR, else ~/.cache/sleepjax/jax_compilation_cache; "
    "'none' disables it.")


def default_compilation_cache_dir() -> str:
    """``$SLEEPJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/sleepjax`` (``~/.cache/sleepjax``), plus
    ``jax_compilation_cache``."""
    root = os.environ.get("SLEEPJAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "sleepjax")
    return os.path.join(root, "jax_compilation_cache")


def enable_compilation_cache(path: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache for this process (a CLI's ``main``, never at
    import): ``path``, else :func:`default_compilation_cache_dir`; ``"none"`` leaves it off.
    Points of a sweep that share shapes and constants then reuse each other's compiled steps.
    Returns the directory used."""
    import jax

    if path == "none":
        return None
    path = path or default_compilation_cache_dir()
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def parse_list_flag(flag: str, texts: Sequence[str], convert: type, minimum: float = 0,
                    strictly: bool = False, noun: str = "value") -> list:
    """``--flag=a,b,...`` -> ``[convert(a), convert(b), ...]``, each finite and at least
    ``minimum`` (above it when ``strictly``), none repeated; anything else is a one-line
    ``ValueError`` naming the flag."""
    kind = "ints" if convert is int else "numbers"
    bound = f"> {minimum:g}" if strictly else f">= {minimum:g}"
    requirement = bound if convert is int else f"a finite number {bound}"
    values = []
    for text in texts:
        try:
            value = convert(text)
        except ValueError:
            raise ValueError(f"--{flag}: expected comma-separated {kind} (got {text!r})") from None
        if not math.isfinite(value) or (value <= minimum if strictly else value < minimum):
            raise ValueError(f"--{flag}: every {noun} must be {requirement} (got {text!r})")
        values.append(value)
    if len(set(values)) != len(values):
        raise ValueError(f"--{flag}: {noun}s repeat (got {values})")
    return values


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else repr(text)


def make_flags_parser(config_flag: str = "config") -> Callable[[list[str]], list[str]]:
    """An ``app.run(flags_parser=...)`` that reports any flag or config error, and any
    positional argument, in one line.

    ``config_flags`` reports a missing file only when the config is first used, an exception
    inside the file as a traceback inside the message, and an unknown override key as a bare
    ``AttributeError``; each becomes one line naming the path or the key.
    """
    def parse(argv: list[str]) -> list[str]:
        try:
            remaining = flags.FLAGS(argv)
        except Exception as error:   # any flag error, or the config file's own exception
            fail(_describe_flag_error(argv, config_flag, error))
        if len(remaining) > 1:   # absl would print the whole usage text for these
            fail(f"unexpected positional argument(s) {remaining[1:]}: every option is a flag "
                 "(--name=value); see --help")
        config_value = flags.FLAGS[config_flag].value
        if config_value is not None:
            try:
                config_value.keys()    # config_flags' deferred error for an unreadable file
            except OSError as error:
                from ml_collections import config_flags

                path = config_flags.get_config_filename(flags.FLAGS[config_flag]).partition(":")[0]
                reason = ("no such file" if not os.path.isfile(path)
                          else _last_line(error.__cause__ or error))
                fail(f"--{config_flag}: cannot read config file {path!r} ({reason})")
        return remaining

    return parse


def _describe_flag_error(argv: list[str], config_flag: str, error: Exception) -> str:
    from sleepjax.training.experiment_files import load_config

    prefix = f"--{config_flag}."
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{config_flag}=")), None)
    if isinstance(error, (AttributeError, KeyError)) and spec:
        try:   # name the first override whose key the config does not have
            cfg = load_config(spec)
            for arg in argv:
                if arg.startswith(prefix):
                    key = arg[len(prefix):].split("=", 1)[0]
                    node = cfg
                    for part in key.split("."):
                        if not hasattr(node, "keys") or part not in node.keys():
                            return f"{arg.split('=', 1)[0]}: unknown config key {key!r}"
                        node = node[part]
        except Exception:   # fall through to the error's own message
            pass
    message = _last_line(error)
    if "Error whilst parsing config file" in str(error) and spec:
        return f"--{config_flag}={spec}: {message}"
    return message


def quiet_library_logs() -> None:
    """Library logs (orbax, absl, jax) at WARNING unless ``--verbosity`` was given."""
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)


def run_main(argv, config, workdir: str | None, cache_dir: str | None,
             body: Callable[[], int]) -> int:
    """The body of a training CLI's ``main``: no positional arguments, ``--config`` and
    ``--workdir`` required, quiet library logs, a multi-host job joined first (a no-op for one
    process: :mod:`sleepjax.parallel.multihost`), the compilation cache on, then ``body`` with
    its expected failures reported in one line."""
    from absl import app

    from sleepjax.parallel import multihost

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if config is None or workdir is None:
        raise app.UsageError("--config and --workdir are required")
    quiet_library_logs()
    multihost.initialize_distributed()
    enable_compilation_cache(cache_dir)
    return run_reporting_errors(body)


def run_reporting_errors(body: Callable[[], int]) -> int:
    """Run a CLI's body; expected failures become one line on stderr and a non-zero exit."""
    from sleepjax.training.checkpoint_errors import CheckpointWriteError
    from sleepjax.training.interrupts import TrainingInterrupted
    from sleepjax.training.trainer import NonFiniteError
    from sleepjax.training.workdir_lock import WorkdirBusyError

    try:
        return body()
    except TrainingInterrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:   # a second Ctrl-C, or one outside the training loop
        print("interrupted: stopped at once (second Ctrl-C or outside a training step); "
              "checkpoints already on disk are complete", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CheckpointWriteError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # orbax's failed background threads would print tracebacks while the interpreter shuts
        # down; the checkpoints on disk are complete, nothing is left to write.
        os._exit(EXIT_ERROR)
    except (NonFiniteError, WorkdirBusyError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
