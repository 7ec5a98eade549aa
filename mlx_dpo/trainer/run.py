"""A training run: `train(config, options)` opens the session and the run directory, and
`Run` sets the run up (events, health checks, reference log-probs, optimizer, resume), loops
over optimizer steps (commands between them, evaluations and checkpoints on their schedule)
and ends it with a saved adapter and one RunResult."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from mlx_dpo import checkpoints, distributed, loss_catalog, reference, rundir
from mlx_dpo.batching import steps_per_epoch
from mlx_dpo.config import TrainConfig, save_config, thresholds_from_dict
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.errors import UserError, resource_failure
from mlx_dpo.events import CONFIG_FILE, LOSS, EventWriter, read_events
from mlx_dpo.grad_checkpoint import checkpoint_blocks
from mlx_dpo.health import HealthMonitor, summarize
from mlx_dpo.memory.arithmetic import MemoryPlan, plan_dict, summary_lines
from mlx_dpo.memory.guard import (
    over_limit_message,
    plan_for_session,
    resolve_auto_batch,
    start_run_memory,
    will_not_fit_message,
)
from mlx_dpo.memory.session import data_lengths, forward_batch_for
from mlx_dpo.model import adapter_weights, count_parameters, is_quantized
from mlx_dpo.platform import peak_memory_gb, restore_cache_limit, set_wired_limit
from mlx_dpo.rounds import round_fields
from mlx_dpo.session import Session, open_session
from mlx_dpo.trainer.batch_logps import compute_reference, reference_columns
from mlx_dpo.trainer.control import PAUSE_POLL_SECONDS, RunControl, StopRequest, stop_on_signals
from mlx_dpo.trainer.evaluation import EvaluationStopped, evaluate_split
from mlx_dpo.trainer.progress import PhaseProgress, ReferenceProgress
from mlx_dpo.trainer.reporting import (
    HealthReport,
    ProgressLines,
    Reporter,
    RunResult,
    RunStatus,
    StatusFile,
    eval_line,
    failure_message,
    step_line,
    truncation_warnings,
)
from mlx_dpo.trainer.resume import (
    DATA_ORDER,
    DATA_ORDER_KEY,
    INPUTS_KEY,
    check_same_inputs,
    data_order_warning,
    evaluated_at,
    prepare_run_dir,
    restore_checkpoint,
    run_inputs,
    share_loss_state,
    share_resume_point,
)
from mlx_dpo.trainer.samples import SampleWatch, read_sample_prompts, start_samples
from mlx_dpo.trainer.schedule import (
    Schedule,
    build_optimizer,
    build_schedule,
    learning_rate_at,
    total_steps,
)
from mlx_dpo.trainer.step import StepBatches, TrainingStep
from mlx_dpo.unpaired import CompletionSplit, length_bias_figures


class TrainingFailed(Exception):
    """The run cannot go on (non-finite loss, a health error); the message says why."""


@dataclass
class RunOptions:
    run_dir: Path
    resume: bool = False
    on_line: Callable[[str], None] = print
    handle_signals: bool = True


def train(config: TrainConfig, options: RunOptions) -> str:
    """Run (or resume) a training run in options.run_dir. Returns the final status:
    "completed", "stopped" or "failed". User errors raise UserError before the run starts."""
    run_dir = options.run_dir
    ranks = distributed.init()
    if not ranks.is_main:
        # Only rank 0 writes the run directory and prints.
        options = dataclasses.replace(options, on_line=lambda _line: None)
    started = time.time()
    # Ours alone while it runs (mlx_dpo/rundir.py): checked, locked, a resume's settings
    # compared with config.yaml, all before anything is written into it.
    lock, notes = rundir.claim_run_dir(run_dir, config, options.resume, ranks.is_main)
    damaged: list[str] = []
    resume_from = prepare_run_dir(run_dir, options.resume, ranks.is_main, damaged.append)
    events = EventWriter(run_dir, ranks.size, enabled=ranks.is_main)
    stop = StopRequest()
    with stop_on_signals(stop, options.handle_signals):
        try:
            status = StatusFile(run_dir, RunStatus(model=config.model), enabled=ranks.is_main)
            reporter = Reporter(events, status, options.on_line, started)
            status.update()
            for note in notes:
                reporter.note(note)
            for warning in damaged:
                reporter.warn(warning)
            if problem := reference.cache_problem():  # read-only, or cannot be made
                reporter.warn(problem)
            session = _open_session(config, reporter, resume_from)
            # `batch_size: auto` needs the model and the data; config.yaml records the choice.
            config = resolve_auto_batch(session, config)
            # The block class itself is patched; it is restored when the run ends so that
            # other runs in this process (tests, notebooks) get the plain blocks back.
            restore_blocks = checkpoint_blocks(session.model) if config.grad_checkpoint else None
            try:
                run = Run(config, run_dir, options.resume, session, reporter, stop, ranks)
                return run.execute(resume_from)
            finally:
                if restore_blocks is not None:
                    restore_blocks()
                restore_cache_limit()
        finally:
            events.close()
            lock.release()


def _open_session(config: TrainConfig, reporter: Reporter, resume_from: Path | None) -> Session:
    """open_session, its long phases told as `progress` events, and on resume the check that
    it loaded what the checkpoint trained on; a failure ends the run (a run_end event) before
    it is raised. A bad --sample-prompts file fails before loading."""
    try:
        read_sample_prompts(config)
        session = open_session(config, progress=PhaseProgress(reporter.events, reporter.say))
        check_same_inputs(resume_from, session)
        return session
    except BaseException as err:
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        reporter.finish(RunResult("failed", 0, adapter_path=None, error=message))
        raise


class Run:
    """One run on an opened session. `execute` sets it up, runs the loop and reports its end;
    `step` is the number of optimizer steps done."""

    # Made while the run sets up (announce, start_health, reference_logps, start_optimizer):
    adapter_config: dict
    memory_plan: MemoryPlan
    run_start: dict
    health: HealthReport
    cached_reference: dict[str, dict[str, np.ndarray]]  # split -> column -> values
    schedule: Schedule
    optimizer: optim.AdamW
    training_step: TrainingStep
    control: RunControl
    progress: ProgressLines
    kept_events: list[dict]  # the stream a resumed run kept (none on a fresh run)
    samples: SampleWatch
    resume_from: Path | None

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        resume: bool,
        session: Session,
        reporter: Reporter,
        stop: StopRequest,
        ranks: distributed.Ranks,
    ):
        self.config = config
        self.run_dir = run_dir
        self.resume = resume
        self.session = session
        self.model = session.model
        self.reporter = reporter
        self.events = reporter.events
        self.status = reporter.status
        self.say = reporter.say
        self.stop = stop
        self.ranks = ranks
        self.train_split = session.splits["train"]
        self.valid_split = session.splits.get("valid")
        self.steps = total_steps(config, len(self.train_split), ranks.size)
        self.steps_per_epoch = steps_per_epoch(
            len(self.train_split), config.batch_size, config.grad_accumulation, ranks.size
        )
        self.step = 0
        self._forward_batches: dict[str, int] = {}  # split name -> forward_batch
        self.inputs = run_inputs(session)  # kept in each checkpoint, checked on --resume
        self.best_eval: dict | None = None
        self.final_eval: dict | None = None
        self.step_times: list[float] = []

    # ---- the run, start to end -------------------------------------------------------------

    def execute(self, resume_from: Path | None) -> str:
        """Set up, run the steps, save, report the end; the final status."""
        self.announce(resume_from)
        self.start_health(resume_from)
        # Made before the reference pass, so a stop command is read during it too.
        self.control = RunControl(self.run_dir, self.stop, self.config.pause_timeout_minutes * 60)
        try:
            self.cached_reference = self.reference_logps()
        except reference.Interrupted as stopped:
            self.say(
                f"stopped during the reference log-probs ({stopped.done}/{stopped.total} pairs "
                "kept: the next start with this model and data continues from there)"
            )
            return self.finish("stopped", None)
        broken = self.broken_base_model()
        if broken is not None:
            self.say(f"error: {broken}")
            self.finish("failed", broken)
            raise UserError(broken)
        self.start_optimizer(resume_from)
        self.samples = start_samples(
            self.config, self.session, self.reporter, self.kept_events, self.ranks.is_main
        )
        start_run_memory(self.memory_plan)
        self.model.train()
        self.status.update(state="training", step=self.step, total_steps=self.steps)
        self.progress = ProgressLines(self.steps)
        self.resume_from = resume_from
        failure = self.run_steps()
        if failure is not None:
            self.say(f"error: {failure}")
            return self.finish("failed", failure)
        return self.save_and_finish()

    def run_steps(self) -> str | None:
        """The loop; the message of a failure that ends the run, or None. A bug is recorded
        as the run's end, then raised."""
        try:
            self.loop()
        except TrainingFailed as err:
            return str(err)
        except Exception as err:
            message = failure_message(
                err, f"step {self.step + 1}", self._last_checkpoint(), self.memory_hint()
            )
            if resource_failure(err) is None:  # a bug: recorded, then the traceback
                self.finish("failed", message)
                raise
            return message
        return None

    def loop(self) -> None:
        """Optimizer steps until the last one or a stop, then the final evaluation (and, on
        resume, first the evaluation a stop cut short). Commands and stop requests are taken
        between steps."""
        if self._evaluation_cut_short():
            self.evaluate()
            self.check_failures()
        while self.step < self.steps:
            paused = self.take_commands()
            # A stop (command, signal) is taken while paused too: a paused run stops and saves.
            if self.ranks.any(self.stop.requested):
                self.stop.request()
                break
            if paused:
                time.sleep(PAUSE_POLL_SECONDS)
                continue
            self.train_step()
            if self._due(self.config.eval_every):
                self.evaluate()
                self.check_failures()
                self.samples.at_eval(self.step, sum(self.step_times))
            if self._due(self.config.save_every):
                self.save()
        if not self.stop.requested and self.valid_split:
            self.final_eval = self.evaluate()
            self.check_failures()
        if not self.stop.requested:
            self.samples.at_eval(self.step, sum(self.step_times), final=True)

    def save_and_finish(self) -> str:
        """The last save (also of a stopped run), the closing lines and the run's end."""
        status = "completed"
        try:
            if self.stop.requested:
                status = "stopped"
                self.reporter.enter_state(self.step, "stopping")
                reason = f" ({self.stop.reason})" if self.stop.reason else ""
                self.say(f"stopping after step {self.step}{reason}; saving")
            path = self.save()
        except Exception as err:
            # save() says a full disk as TrainingFailed; anything else here is a bug.
            error = str(err) if isinstance(err, TrainingFailed) else f"{type(err).__name__}: {err}"
            self.say(f"error: {error}")
            self.finish("failed", error)
            if not isinstance(err, TrainingFailed):
                raise
            return "failed"
        if path is not None:  # rank 0 saves; the other ranks say nothing anyway
            self.say(f"adapters saved to {self.run_dir} (checkpoint {path.name})")
        self.say(f"run health: {summarize(self.health.findings)}")
        return self.finish(status, None, self.final_eval)

    def finish(self, status: str, error: str | None, final_eval: dict | None = None) -> str:
        self.reporter.finish(
            RunResult(status, self.step, str(self.run_dir), error, final_eval, self.best_eval)
        )
        return status

    # ---- setting up ------------------------------------------------------------------------

    def announce(self, resume_from: Path | None) -> None:
        """config.yaml, the memory plan, the run_start event and the opening lines."""
        config, session, train_split, valid_split = (
            self.config,
            self.session,
            self.train_split,
            self.valid_split,
        )
        trainable, total_params = count_parameters(self.model)
        if self.ranks.is_main:
            save_config(config, self.run_dir / CONFIG_FILE)
        self.adapter_config = _adapter_config(config, session)
        set_wired_limit()
        self.memory_plan = plan_for_session(session, config)
        self.run_start = self.events.write(
            "run_start",
            0,
            model=config.model,
            data=config.data,
            run_dir=str(self.run_dir),
            total_steps=self.steps,
            epochs=self.steps / self.steps_per_epoch,
            train_pairs=len(train_split),
            valid_pairs=len(valid_split) if valid_split else 0,
            test_pairs=len(session.splits["test"]) if "test" in session.splits else 0,
            batch_size=config.batch_size,
            grad_accumulation=config.grad_accumulation,
            beta=config.beta,
            loss=config.loss,
            reference=config.reference,
            prefix_sharing=session.prefix_sharing,
            trainable_parameters=trainable,
            total_parameters=total_params,
            truncated={name: split.truncation for name, split in session.splits.items()},
            resumed_from=checkpoints.checkpoint_step(resume_from),
            pid=os.getpid(),
            config=config.to_dict(),
            memory_plan=plan_dict(self.memory_plan),
            quantized_base=is_quantized(self.model),
            **session.data_info,
            # A round of `train --rounds`: round, rounds and the earlier rounds' results.
            **round_fields(self.run_dir),
        )
        self.say(
            f"model {config.model}: {total_params / 1e6:.1f}M parameters, "
            f"{trainable / 1e6:.3f}M trainable (LoRA rank {session.lora_parameters['rank']} "
            f"on {session.lora_layers} layers)"
        )
        unit = "completions" if isinstance(train_split, CompletionSplit) else "pairs"
        self.say(
            f"data {config.data}: {len(train_split)} train {unit}"
            + (f", {len(valid_split)} valid" if valid_split else "")
            + f"; {self.steps} steps"
        )
        for line in session.data_notes:
            self.say(line)
        if config.prefix_sharing and not session.prefix_sharing:
            self.say(
                "prefix sharing off (this architecture's cache fails the check): each row "
                "computes its own prompt"
            )
        for line in summary_lines(self.memory_plan):
            self.say(line)
        too_big = will_not_fit_message(self.memory_plan)
        if too_big:
            self.events.write("log", 0, level="warning", message=too_big)

    def start_health(self, resume_from: Path | None) -> None:
        """The health checks, with their windows rebuilt from the kept stream on resume; the
        data's length bias (on a fresh run) and what loading cut."""
        monitor = HealthMonitor.from_run_start(
            self.run_start, thresholds_from_dict(self.config.health)
        )
        # Rebuild the checks' windows from the kept stream; its findings are already written.
        self.kept_events = read_events(self.run_dir) if self.resume else []
        for event in self.kept_events:
            monitor.observe(event)
        self.health = HealthReport(monitor, self.reporter)
        self.health.report_off(monitor.checks_off(self.run_start), self.kept_events)
        if resume_from is None:
            for finding in monitor.length_bias(**_length_bias(self.train_split)):
                self.health.report(finding)
        for name, split in self.session.splits.items():
            for message in truncation_warnings(name, split.truncation, self.config.max_length):
                self.reporter.warn(message)

    def reference_logps(self) -> dict[str, dict[str, np.ndarray]]:
        """The reference log-probs of train and valid (batch_logps.reference_columns), once,
        from the on-disk cache when possible; none with a live reference (the step computes
        them) or a reference-free loss (no pass and no cache at all). A stop request during
        the pass raises reference.Interrupted once the pairs done so far are kept."""
        cached: dict[str, dict[str, np.ndarray]] = {}
        columns = reference_columns(self.config)
        if self.config.reference != "cached" or not columns:
            return cached
        self.status.update(state="computing_reference", total_steps=self.steps)
        for name, split in (("train", self.train_split), ("valid", self.valid_split)):
            if split is None:
                continue
            tic = time.perf_counter()
            unit = "completions" if isinstance(split, CompletionSplit) else "pairs"
            values = reference.reference_logps(
                reference.cache_key(self.session.weights_fingerprint, split),
                split,
                compute_reference(self.session, split, columns),
                self.forward_batch(split),
                ReferenceProgress(name, self.events, self.say, unit),
                ranks=self.ranks,
                should_stop=self.control.stop_requested,
                columns=columns,
                warn=self.reporter.warn,
            )
            cached[name] = dict(zip(columns, values, strict=True))
            seconds = time.perf_counter() - tic
            self.say(f"reference log-probs for {name}: {len(split)} {unit} in {seconds:.1f}s")
        return cached

    def broken_base_model(self) -> str | None:
        """Reference log-probs that are not finite before any step: the base model (its
        weights overflow) is broken, whatever the pairs; without this the first step's
        non-finite loss blamed the data."""
        splits = {"train": self.train_split, "valid": self.valid_split}
        for name, columns in self.cached_reference.items():
            finite = np.logical_and.reduce([np.isfinite(v) for v in columns.values()])
            bad = np.flatnonzero(~finite)
            if bad.size:
                split = splits[name]
                unit = "completion" if isinstance(split, CompletionSplit) else "pair"
                where = ", ".join(split.sources[i] for i in bad[:3])
                return (
                    f"{self.config.model}: the model's own log-probs are not finite, before any "
                    f"training ({bad.size} {name} {unit}(s): {where}, ...); its weights are "
                    "broken: fetch it again or use another"
                )
        return None

    def start_optimizer(self, resume_from: Path | None) -> None:
        """The schedule and AdamW, the checkpoint's state on resume, the compiled step."""
        config = self.config
        self.schedule = build_schedule(config, self.steps)
        self.optimizer = build_optimizer(config, self.schedule)
        self.optimizer.init(self.model.trainable_parameters())
        loss_state = None
        if resume_from is not None:
            point = restore_checkpoint(resume_from, self.model, self.optimizer)
            self.step, self.best_eval = point.step, point.best_eval
            loss_state = _checked_loss_state(point.loss_state, config, resume_from)
            self.status.record(last_checkpoint=str(resume_from))
            self.events.write("log", self.step, level="info", message=f"resumed from {resume_from}")
            self.say(f"resumed from {resume_from} at step {self.step}")
            if warning := data_order_warning(resume_from):
                self.reporter.warn(warning)
        if self.resume and self.ranks.size > 1:
            self.step = share_resume_point(self.ranks, self.step, self.model, self.optimizer)
        mx.eval(self.model.parameters(), self.optimizer.state)
        batches = StepBatches(
            self.session, self.train_split, config, self.ranks, self.steps_per_epoch
        )
        self.training_step = TrainingStep(
            self.session, config, self.optimizer, batches, self.cached_reference.get("train"),
            loss_state,
        )  # fmt: skip
        if self.resume and self.ranks.size > 1:
            state = share_loss_state(self.ranks, self.training_step.loss_state)
            self.training_step.loss_state = state

    # ---- between and during steps ----------------------------------------------------------

    def take_commands(self) -> bool:
        """The dashboard's commands since the last step; whether the run is paused."""
        for command in self.control.poll():
            if command == "pause":
                self.reporter.enter_state(self.step, "paused")
                self.say(f"paused at step {self.step}")
            elif command == "resume":
                self.reporter.enter_state(self.step, "training", event_state="resumed")
                self.say("resumed")
            elif command == "checkpoint":
                self.say(f"checkpoint saved: {self.save()}")
        auto_stop_at = self.control.auto_stop_at()  # a paused run nobody watches stops
        if auto_stop_at != self.status.status.auto_stop_at:
            self.status.update(auto_stop_at=auto_stop_at)
        return self.control.paused

    def train_step(self) -> None:
        """One optimizer step, then its event, health checks, memory guard and console line."""
        tic = time.perf_counter()
        accumulated = self.training_step.accumulate(self.step)
        self.check_failures(accumulated.failure)
        values, pairs, tokens = accumulated.totals(self.ranks)
        grad_norm = self.training_step.apply(accumulated.grads, pairs)
        if not math.isfinite(grad_norm):
            raise TrainingFailed(
                f"non-finite gradients at step {self.step + 1} (pairs "
                f"{accumulated.pair_indices[:16]}); the adapters of the last checkpoint are "
                "kept; try a lower learning rate"
            )
        self.step += 1
        seconds = time.perf_counter() - tic
        self.step_times.append(seconds)
        eta = float(np.mean(self.step_times[-20:])) * (self.steps - self.step)
        epoch = self.step / self.steps_per_epoch
        step_event = self.events.write(
            "step",
            self.step,
            epoch=epoch,
            **values,
            grad_norm=grad_norm,
            learning_rate=learning_rate_at(self.schedule, self.step),
            tokens_per_second=tokens / seconds,
            pairs_per_second=pairs / seconds,
            peak_memory_gb=peak_memory_gb(),
            elapsed=self.reporter.elapsed(),
            eta=eta,
        )
        self.status.update(step=self.step, epoch=epoch)
        self.health.observe(step_event)
        self.check_failures()
        self.guard_memory()
        if self.progress.due(self.step):
            self.say(
                step_line(
                    self.step,
                    self.steps,
                    values,
                    pairs / seconds,
                    tokens / seconds,
                    peak_memory_gb(),
                    eta,
                )  # fmt: skip
            )

    def check_failures(self, local_failure: str | None = None) -> None:
        """Stop every rank together when one of them (or a health check) fails."""
        failure = local_failure or (self.health.errors[0] if self.health.errors else None)
        if self.ranks.any(failure is not None):
            raise TrainingFailed(failure or "another rank of this distributed run failed")

    def guard_memory(self) -> None:
        """Stop between steps with a checkpoint rather than be killed by the system."""
        problem = over_limit_message(mx.get_peak_memory(), self.memory_plan, self.memory_hint())
        if problem and not self.stop.requested:
            self.events.write("log", self.step, level="error", message=problem)
            self.say(f"error: {problem}")
            self.stop.request("memory limit")

    def evaluate(self) -> dict | None:
        """The validation split's metrics (None without one), kept as the best if so."""
        if self.valid_split is None or len(self.valid_split) == 0:
            return None
        self.status.update(state="evaluating")
        self.events.write("state", self.step, state="evaluating")
        self.model.eval()
        try:
            result = evaluate_split(
                self.session,
                self.valid_split,
                self.config,
                self.cached_reference.get("valid"),
                loss_state=self.training_step.loss_state,
                should_stop=self.control.stop_requested,
                batch_size=self.forward_batch(self.valid_split),
            )
        except EvaluationStopped:
            self.say(f"stopped during the evaluation at step {self.step}")
            return None
        finally:
            self.model.train()
        self.health.observe(self.events.write("eval", self.step, split="valid", **result))
        if self.best_eval is None or result[LOSS] < self.best_eval[LOSS]:
            self.best_eval = {"step": self.step, **result}
        self.say(eval_line(self.step, result))
        self.reporter.enter_state(self.step, "training")
        return result

    def save(self) -> Path | None:
        """The adapters and a checkpoint of this step (rank 0; None elsewhere). A full disk
        fails the run, naming the last good checkpoint."""
        if not self.ranks.is_main:
            return None
        weights = adapter_weights(self.model)
        loss_state = self.training_step.loss_state
        try:
            checkpoints.save_adapters(self.run_dir, weights, self.adapter_config)
            checkpoints.save_loss_state(self.run_dir, loss_state)
            path = checkpoints.save_checkpoint(
                self.run_dir,
                self.step,
                weights,
                self.optimizer.state,
                self.adapter_config,
                {
                    "best_eval": self.best_eval,
                    "seed": self.config.seed,
                    INPUTS_KEY: self.inputs,
                    DATA_ORDER_KEY: DATA_ORDER,
                },
                loss_state,
            )
        except Exception as err:
            if resource_failure(err) is None:
                raise
            doing = f"saving step {self.step}"
            raise TrainingFailed(failure_message(err, doing, self._last_checkpoint())) from None
        self.events.write("checkpoint", self.step, path=str(path))
        self.events.sync()
        self.status.record(last_checkpoint=str(path))
        return path

    def _due(self, every: int) -> bool:
        """Whether an every-N-steps action (eval, save) falls after this step; the last step
        has its own."""
        return bool(every) and self.step % every == 0 and self.step < self.steps

    def _evaluation_cut_short(self) -> bool:
        """Whether the step a run resumes at was due an evaluation that a stop cut short (the
        stop saved the checkpoint without it)."""
        return (
            self.resume_from is not None
            and self._due(self.config.eval_every)
            and not evaluated_at(self.run_dir, self.step)
        )

    def forward_batch(self, split: TokenizedSplit) -> int:
        """Pairs a batch of the reference and evaluation passes over `split`
        (memory.session.forward_batch_for), worked out once a split."""
        if split.name not in self._forward_batches:
            self._forward_batches[split.name] = forward_batch_for(self.session, self.config, split)
        return self._forward_batches[split.name]

    def memory_hint(self) -> str:
        """How to go on after running out of memory: the resume command that keeps what the
        run trains (rundir.out_of_memory_resume)."""
        return rundir.out_of_memory_resume(self.config, self.run_dir)

    def _last_checkpoint(self) -> str | None:
        return self.status.status.last_checkpoint


def _length_bias(split) -> dict[str, float | int]:
    """The training data's length-bias figures (HealthMonitor.length_bias): chosen vs
    rejected of each pair, or for kto desirable vs undesirable completions."""
    if isinstance(split, CompletionSplit):
        return length_bias_figures(split)
    lengths = data_lengths(split.pairs)
    return {
        "chosen_longer_share": float((lengths.chosen > lengths.rejected).mean()),
        "mean_chosen_tokens": float(lengths.chosen.mean()),
        "mean_rejected_tokens": float(lengths.rejected.mean()),
        "pairs": lengths.pairs,
    }


def _checked_loss_state(state: dict | None, config: TrainConfig, path: Path) -> dict | None:
    """A checkpoint's loss state, refused when the run's loss needs one it does not have (a
    checkpoint of a run with another loss): starting the shift again at 0 would not be the
    run that was interrupted."""
    if "bco_pair" in loss_catalog.loss_names(config.loss) and not state:
        raise UserError(
            f"{path}: this checkpoint has no bco_pair reward shift (loss_state.safetensors), "
            "so the run cannot be resumed with loss bco_pair"
        )
    return state


def _adapter_config(config: TrainConfig, session: Session) -> dict:
    """adapter_config.json of the run: mlx-lm's fields, the run's config, and where an init
    adapter came from."""
    init = session.init_adapter_config
    return checkpoints.adapter_config(
        session.lora_layers,
        session.lora_parameters,
        {
            **config.to_dict(),
            "base_model": config.model,
            "init_adapter_provenance": init
            and {
                "path": str(Path(config.init_adapter).expanduser().resolve()),
                "base_model": init.get("base_model") or init.get("model"),
            },
        },
    )
