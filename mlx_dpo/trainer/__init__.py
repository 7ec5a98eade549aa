"""The training engine, one concern a module (import from the modules; this file re-exports
nothing). A run works on a Session (mlx_dpo/session.py: the model, its LoRA layers, the
tokenizer and the tokenized splits), which the memory plan, eval and compare also open.


    batch_logps.py  a batch's model inputs; policy and reference log-probs of its rows
    evaluation.py   evaluate_split: preference metrics of a whole split (and per pair)
    step.py         the loss of a batch, compiled_step (the one compiled step), and
                    TrainingStep: an optimizer step over its micro-batches
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
