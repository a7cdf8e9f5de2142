"""Feedback alignment: reward model, DPO and KTO on top of an SFT adapter (TRL)."""
