"""Training: cold-start SFT and multi-turn GRPO for crop policies (TRL-based). Import-light: torch, TRL and
peft are imported inside the functions that need them."""
