"""Scale tools, none of which the plain loop needs: memory.py (the memory a run needs, phase by phase, before
any weight loads; train.py --plan), trl_garl.py and train_trl.py (GARL and PAFT inside TRL's GRPOTrainer, for
many GPUs), deepspeed_zero3.yaml (an accelerate config for it)."""
