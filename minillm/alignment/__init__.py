"""Alignment after supervised fine-tuning: preferences, reward models, DPO, RLHF with PPO / GRPO and a
Constitutional-AI loop. One concept per module:

    logprobs.py         log-probabilities of chosen tokens under a model (the quantity every method compares)
    preference_data.py  {"prompt", "chosen", "rejected"} JSONL records -> pairs of rows, batched
    tasks.py            reverse-a-word: a preference task a program checks, and its tiny SFT starting point
    reward_model.py     RewardModel (a scalar head on the last real token), the Bradley-Terry loss, save / load
    prompts.py          RL prompts: {"prompt"} / {"messages"} JSONL records rendered with the chat template
    rollout.py          answers sampled with the KV cache, laid out with the action mask, old / reference log-probs, values
    advantages.py       GAE and group-relative advantages (NumPy)
    ppo_loss.py         the clipped policy and value losses, entropy and the k3 KL as autograd nodes
    kl_control.py       the KL coefficient: fixed, or adaptive toward a target (Ziegler et al.)
    ppo.py              PPOTrainer: PPO (value head) and GRPO (groups) on Finetuner's pieces
    cli_rl.py           `minillm finetune --method ppo|grpo`'s flags and command

The trainers build on minillm/finetune.py (LoRA / QLoRA, the data checks, checkpoints, the log).
"""
