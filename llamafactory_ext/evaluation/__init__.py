"""`lfx eval`: does the persona take? Held-out prompts answered by base, prompted base and tuned model, scored."""
