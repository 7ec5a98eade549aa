"""The mlx-dpo dashboard.

A Textual app that follows a run directory (the event stream, status file and control channel
of `mlx_dpo.events`) and sends control commands to the trainer. It never imports MLX: training
runs in its own process, and the dashboard only reads and writes files in the run directory.

Entry point: `mlx_dpo.tui.app.run_dashboard(run_dir, trainer=None)`.
"""
