"""The exit statuses of `mlx-dpo`: completed and stopped runs and every other success exit 0."""

# A run that failed while training (a bug, or the machine ran out of memory or disk).
EXIT_FAILED = 1
# A user mistake (a file, flag or folder): one line naming it, never a traceback.
EXIT_USER_ERROR = 2
# Ctrl-C outside a run (a run stops cleanly on SIGINT and exits 0): the shell's 128 + SIGINT.
EXIT_INTERRUPTED = 130
