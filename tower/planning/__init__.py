"""Which takes go together, on which server, in what order: VRAM and time models, the planner."""
