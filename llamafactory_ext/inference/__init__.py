"""Talking to a model: local generation, an OpenAI-compatible client for served ones, prompts files, chat."""
