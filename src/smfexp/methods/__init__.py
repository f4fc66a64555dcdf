"""Finetuning methods: one LightningModule each, on one shared base."""
