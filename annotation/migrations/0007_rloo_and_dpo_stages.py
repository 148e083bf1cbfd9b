"""RLOO and DPO (issue 14): a round's path may train its policy with either, so a model version and a job may
be of those stages. Only the choices change: no column does."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0006_slot_queue_order"),
    ]

    operations = [
        migrations.AlterField(
            model_name="modelversion",
            name="stage",
            field=models.CharField(choices=[("base", "Base"), ("sft", "SFT"), ("rm", "Reward model"),
                                            ("ppo", "PPO policy"), ("rloo", "RLOO policy"), ("dpo", "DPO policy")],
                                   max_length=8),
        ),
        migrations.AlterField(
            model_name="trainingjob",
            name="stage",
            field=models.CharField(choices=[("pretrain", "Pretrain"), ("sft", "SFT"), ("rm", "Reward model"),
                                            ("ppo", "PPO"), ("rloo", "RLOO"), ("dpo", "DPO"),
                                            ("evaluate", "Evaluate on held-out prompts"),
                                            ("generate", "Generate candidates")],
                                   max_length=16),
        ),
    ]
