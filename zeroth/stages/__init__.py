"""Pipeline stages around the RL loop: pre-training (next-token prediction) and, later, SFT,
rejection sampling and distillation."""
