"""A memory plan: how much MLX memory a run needs, checked before it starts and kept to while
it runs (docs/memory.md has the formula and its measurements).

    arithmetic.py  pure: shapes -> estimate -> plan (verdict, suggestions, --batch-size auto's
                   choice), and the plan as text (`train --plan`, the start of a run) and as
                   the run_start event's dict
    session.py     the plan's inputs read from a loaded trainer Session: model shape, train
                   pair lengths, the run's settings
    guard.py       applying a plan: the limit, the plan of a session, `--batch-size auto`, MLX's
                   cache limit, the guard that stops a run near the limit

Import from the modules; this file re-exports nothing.
"""
