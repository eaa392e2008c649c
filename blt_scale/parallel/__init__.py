"""How a model is spread over ranks: the process environment, the parallelism config, and the
strategies (FSDP2 today, DeepSpeed next) behind one interface. The model never imports this."""
