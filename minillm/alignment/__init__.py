"""Alignment after supervised fine-tuning: preferences, reward models, DPO, RLHF with PPO / GRPO and a
Constitutional-AI loop. One concept per module:

    logprobs.py         log-probabilities of chosen tokens under a model (the quantity every method compares)
    preference_data.py  {"prompt", "chosen", "rejected"} JSONL records -> pairs of rows, batched
    tasks.py            reverse-a-word: a preference task a program checks, and its tiny SFT starting point
    reward_model.py     RewardModel (a scalar head on the last real token), the Bradley-Terry loss, save / load

The trainers build on minillm/finetune.py (LoRA / QLoRA, the data checks, checkpoints, the log).
"""
