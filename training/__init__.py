"""Training library: offline base model, SFT, reward model from k-way rankings, candidate generation.

Plain Python on torch and transformers; it never imports Django. Importing ``training``,
``training.config`` or ``training.data`` does not import torch: each stage module imports it itself,
so the web process and data validation stay light.

Stages (each ``fn(config, paths..., on_log=..., should_stop=...) -> StageResult``):

- ``training.pretrain.pretrain``            a small base model, from scratch or continued
- ``training.sft.train_sft``                supervised fine-tuning with the prompt masked
- ``training.reward.train_reward_model``    InstructGPT k-way ranking loss
- ``training.ppo.train_ppo``                PPO against the reward model, per-token KL to the SFT policy
- ``training.rloo.train_rloo``              RLOO: k samples a prompt, leave-one-out baseline, no critic
- ``training.dpo.train_dpo``                DPO from k-way rankings (listwise Plackett–Luce or pairwise)
- ``training.generate.generate_candidates`` k sampled candidates per prompt

CLI: ``python -m training {pretrain,sft,rm,ppo,rloo,dpo,generate,convert,import-base} --help``.
Contracts: docs/training.md.
"""

__version__ = "0.1.0"
