"""What each regime minimises, by name and in words (runs, studies and reports name it alike)."""

#: The name of each regime's objective: a run's ``record.objective`` and a study's first value.
OBJECTIVES = {"pretrain": "val_loss", "sft": "response_val_loss", "rl": "reward_error"}

#: Each objective in words.
OBJECTIVE_LABELS = {"val_loss": "val loss", "response_val_loss": "response val loss",
                    "reward_error": "reward error (1 - held-out reward)"}
