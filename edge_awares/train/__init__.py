"""Training: cold-start SFT and multi-turn GRPO for crop policies, on TRL. Import-light: torch, TRL and peft are
imported inside the functions (or modules) that need them.

render (trajectory -> TRL messages/images via the protocol objects), collate (SFT batches), sft, grpo (crop
environment, TRL reward functions), rewards, evaluate (validation through Session), checkpoint (LoRA, merge),
runlog (config/versions/metrics), config (run configurations), oracle (ground-truth trajectories), steptime.
"""
