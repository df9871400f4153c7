"""Training commands for the models the project trains itself (weights committed)."""
