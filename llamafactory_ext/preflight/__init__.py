"""Before renting a GPU: `lfx check` (the whole run validated, token lengths, labels) and `lfx plan` (steps,
memory, time and cost)."""
