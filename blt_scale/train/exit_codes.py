"""Exit codes of a training process (and of `blt train`, which returns its ranks' code).

0   finished: the last step is trained and checkpointed
1   failed: an unexpected error (traceback on stderr); do not requeue blindly
2   bad recipe or arguments (one line on stderr naming the key or file)
3   halted: too many non-finite steps in a row (diagnostic on stderr); the last checkpoint
    holds finite weights; requeueing would repeat the failure
75  stopped by SIGUSR2 or SIGTERM after every rank saved the same complete checkpoint;
    requeue and `--resume auto` continues (75 is EX_TEMPFAIL, "try again later")
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NONFINITE = 3
EXIT_STOPPED = 75
