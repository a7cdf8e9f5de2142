"""Trainer callbacks: complete-checkpoint markers, Ctrl-C, throughput counters, the progress bar."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from convtune.training import checkpoints as ckpt


@dataclass
class RunCounters:
    """Tokens and (conversation, task) pairs trained; cumulative over sessions of a resumed run."""

    tokens: int = 0
    pairs: int = 0
    step_seconds: float = 0.0  # time inside optimizer steps (excludes evaluation and saving)
    sessions: list[dict[str, Any]] = field(default_factory=list)  # earlier sessions (from the checkpoint)
    # this session
    session_start_step: int = 0
    session_tokens: int = 0
    session_pairs: int = 0
    session_step_seconds: float = 0.0
    session_started: float = field(default_factory=time.time)

    def add_batch(self, tokens: int, pairs: int) -> None:
        self.tokens += tokens
        self.pairs += pairs
        self.session_tokens += tokens
        self.session_pairs += pairs

    def session_record(self, step: int) -> dict[str, Any]:
        return {
            "start_step": self.session_start_step, "end_step": step,
            "wall_seconds": round(time.time() - self.session_started, 2),
            "step_seconds": round(self.session_step_seconds, 2),
            "tokens": self.session_tokens, "pairs": self.session_pairs,
        }

    def snapshot(self, step: int) -> dict[str, Any]:
        """What a checkpoint marker stores so a resumed run keeps counting."""
        return {"step": step, "tokens": self.tokens, "pairs": self.pairs,
                "step_seconds": round(self.step_seconds, 3),
                "sessions": [*self.sessions, self.session_record(step)]}

    @classmethod
    def restore(cls, marker: dict[str, Any], step: int) -> RunCounters:
        return cls(tokens=int(marker.get("tokens", 0)), pairs=int(marker.get("pairs", 0)),
                   step_seconds=float(marker.get("step_seconds", 0.0)),
                   sessions=list(marker.get("sessions", [])), session_start_step=step)

    def session_rate(self) -> float:
        return self.session_tokens / self.session_step_seconds if self.session_step_seconds > 0 else 0.0


class ThroughputCallback(TrainerCallback):
    """Times each optimizer step (tokens and pairs are counted by the trainer's training_step)."""

    def __init__(self, counters: RunCounters):
        self.counters = counters
        self._t0: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            dt = time.perf_counter() - self._t0
            self.counters.step_seconds += dt
            self.counters.session_step_seconds += dt
            self._t0 = None


class CompleteCheckpointCallback(TrainerCallback):
    """After the Trainer's save returns: write the completion marker, then rotate old checkpoints."""

    def __init__(self, counters: RunCounters, keep: int, extra: dict[str, Any] | None = None):
        self.counters = counters
        self.keep = keep
        self.extra = dict(extra or {})
        self.last_saved: Path | None = None

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            ckpt.mark_complete(folder, {**self.counters.snapshot(state.global_step), **self.extra})
            ckpt.rotate(Path(args.output_dir), self.keep, protect=folder)
            self.last_saved = folder


@dataclass
class InterruptFlag:
    requested: bool = False
    signal_name: str = ""


class InterruptCallback(TrainerCallback):
    """Turns a requested interrupt into "save a checkpoint now and stop"."""

    def __init__(self, flag: InterruptFlag):
        self.flag = flag

    def _stop(self, args, state, control):
        if self.flag.requested:
            control.should_evaluate = False
            control.should_training_stop = True
            # A complete checkpoint of this very step (saved just before the signal) is kept as is.
            done = Path(args.output_dir) / f"checkpoint-{state.global_step}" / ckpt.MARKER
            control.should_save = control.should_save or not done.is_file()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self._stop(args, state, control)

    def on_substep_end(self, args, state, control, **kwargs):
        # Mid gradient accumulation: the partial gradients are dropped; the saved state is the
        # last optimizer step, and resuming replays this step from its first micro-batch.
        return self._stop(args, state, control)


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressCallback(TrainerCallback):
    """A tqdm bar on a terminal (step/total, loss, tokens/s, ETA); one line per log step otherwise."""

    def __init__(self, counters: RunCounters, *, stream=None, tty: bool | None = None,
                 echo: Callable[[str], None] | None = None):
        self.counters = counters
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.echo = echo
        self.bar = None
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self._steps_done = 0

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        elif self.echo is not None:
            self.echo(text)
        else:
            print(text, file=self.stream, flush=True)

    def _eta(self, state) -> float:
        if not self._steps_done or self.counters.session_step_seconds <= 0:
            return 0.0
        return (state.max_steps - state.global_step) * self.counters.session_step_seconds / self._steps_done

    def _postfix(self) -> dict[str, str]:
        post = {}
        if self.loss is not None:
            post["loss"] = f"{self.loss:.3f}"
        if self.eval_loss is not None:
            post["eval"] = f"{self.eval_loss:.3f}"
        post["tok/s"] = f"{self.counters.session_rate():.0f}"
        return post

    def on_train_begin(self, args, state, control, **kwargs):
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            file=self.stream, dynamic_ncols=True, mininterval=0.5,
                            bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}")

    def on_step_end(self, args, state, control, **kwargs):
        self._steps_done += 1
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix(self._postfix(), refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = float(logs["loss"])
            if self.bar is None:
                self._write(
                    f"step {state.global_step}/{state.max_steps}  loss {self.loss:.4f}  "
                    f"tok/s {self.counters.session_rate():.0f}  eta {_fmt_eta(self._eta(state))}"
                )
        if "eval_loss" in logs:
            self.eval_loss = float(logs["eval_loss"])
            self._write(f"step {state.global_step}: eval loss {self.eval_loss:.4f}")
        if self.bar is not None:
            self.bar.set_postfix(self._postfix())

    def on_save(self, args, state, control, **kwargs):
        if self.bar is None:
            self._write(f"step {state.global_step}: checkpoint saved")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
