"""Training: the run (data, model, LoRA, TRL), the trainer's loss, callbacks, the memory plan, the data check."""
