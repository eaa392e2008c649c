"""How a model is spread over ranks: the process environment, the parallelism config, and the
strategies (one process, FSDP2, DeepSpeed ZeRO) behind one interface. The model never imports this."""
