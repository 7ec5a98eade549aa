"""The training engine, one concern a module (import from the modules; this file re-exports
nothing). A run works on a Session (mlx_dpo/session.py: the model, its LoRA layers, the
tokenizer and the tokenized splits), which the memory plan, eval and compare also open.


    batch_logps.py  a batch's model inputs; policy and reference log-probs of its rows (and
                    LD-DPO's tails, WPO's terms); which reference columns a run needs
    evaluation.py   evaluate_split: the loss's metrics over a whole split (and per pair)
    step.py         the objective of a batch (every loss of mlx_dpo/losses.py), compiled_step
                    (the one compiled step, the loss state in and out), and TrainingStep:
                    an optimizer step over its micro-batches
    schedule.py     total_steps, the learning-rate schedule, the AdamW optimizer
    control.py      stop signals, control.jsonl commands (pause, resume, checkpoint, stop)
    resume.py       --resume: tidying the run directory, loading the checkpoint, sharing it
                    with the other ranks
    reporting.py    events, status.json, console lines, health findings, RunResult (the end
                    of a run)
    run.py          train(config, options) -> status, and Run: the loop

A run's data flow: data -> batching -> model/reference -> log-probs -> losses -> step -> run
-> events (mlx_dpo/events.py) -> dashboard, view and export.
"""
