"""Alignment after supervised fine-tuning: preferences, reward models, DPO, RLHF with PPO / GRPO and a
Constitutional-AI loop. One concept per module:

    judge.py            pairwise AI judgements: p(A) vs p(B) from the model's next-token probabilities
    constitution_files.py  the Constitutional-AI inputs: principles, prompts, step templates (checked)
    constitution.py     the Constitutional-AI loop: answer, critique, revise, judge -> SFT and preference records
    logprobs.py         log-probabilities of chosen tokens under a model (the quantity every method compares)
    preference_data.py  {"prompt", "chosen", "rejected"} JSONL records -> pairs of rows, batched
    tasks.py            reverse-a-word: a preference task a program checks, and its tiny SFT starting point
    reward_model.py     RewardModel (a scalar head on the last real token), the Bradley-Terry loss, save / load
    train.py            the loop on preference pairs (Finetuner's, with pairs): PreferenceConfig, PreferenceTrainer
    reward_train.py     RewardTrainer: `minillm finetune --method reward`
    best_of_n.py        sample n replies, keep the reward model's favourite: `minillm generate --best-of N`
    dpo.py              DPO / IPO / hinge against a frozen reference: `minillm finetune --method dpo`
    prompts.py          RL prompts: {"prompt"} / {"messages"} JSONL records rendered with the chat template
    rollout.py          answers sampled with the KV cache, laid out with the action mask, old / reference log-probs, values
    advantages.py       GAE and group-relative advantages (NumPy)
    ppo_loss.py         the clipped policy and value losses, entropy and the k3 KL as autograd nodes
    kl_control.py       the KL coefficient: fixed, or adaptive toward a target (Ziegler et al.)
    ppo.py              PPOTrainer: PPO (value head) and GRPO (groups) on Finetuner's pieces
    cli_rl.py           `minillm finetune --method ppo|grpo`'s flags and command

The trainers build on minillm/finetune.py (LoRA / QLoRA, the data checks, checkpoints, the log).
"""
