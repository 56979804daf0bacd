"""Alignment after supervised fine-tuning: preferences, reward models, DPO, RLHF with PPO / GRPO and a
Constitutional-AI loop. One concept per module:

    logprobs.py       log-probabilities of chosen tokens under a model (the quantity every method compares)
    judge.py          pairwise AI judgements: p(A) vs p(B) from the model's next-token probabilities
    constitution_files.py  the Constitutional-AI inputs: principles, prompts, step templates (checked)
    constitution.py   the Constitutional-AI loop: answer, critique, revise, judge -> SFT and preference records

The trainers build on minillm/finetune.py (LoRA / QLoRA, the data checks, checkpoints, the log).
"""
